/* tests/unit/test_http.c - the HTTP adapter without a broker: the --http
 * address parser (tly_http_parse_listen), and the live page served at GET /
 * by a server on a loopback port, byte for byte the page.html of the source
 * tree with the pipeline's name in its <body> tag. */
#include "tly_test.h"

#include "http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>

/* ---- tly_http_parse_listen ---------------------------------------------- */

static void test_listen_accepts(void)
{
    static const struct {
        const char *listen, *host;
        int port;
    } good[] = {
        {"127.0.0.1:9464", "127.0.0.1", 9464},
        {"0.0.0.0:80", "0.0.0.0", 80},
        {"localhost:65535", "localhost", 65535},
        {"metrics.example.com:1", "metrics.example.com", 1},
        {"127.0.0.1:0", "127.0.0.1", 0}, /* any free port */
        /* an empty host is the loopback address */
        {":9464", "127.0.0.1", 9464},
        {":0", "127.0.0.1", 0},
        /* split at the last colon: IPv6 without brackets */
        {"::1:9464", "::1", 9464},
        {"fe80::1%eth0:8080", "fe80::1%eth0", 8080},
        /* brackets are kept, as http.h says (the bind then fails) */
        {"[::1]:9464", "[::1]", 9464},
    };
    char host[256];
    int port;

    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        port = -1;
        host[0] = '\0';
        CHECK_MSG(tly_http_parse_listen(good[i].listen, host, sizeof(host), &port) == 0,
                  "\"%s\" refused", good[i].listen);
        CHECK_STR(host, good[i].host);
        CHECK_MSG(port == good[i].port, "\"%s\": port %d", good[i].listen, port);
    }
end:;
}

/* Refused addresses leave host and port as they were. */
static void test_listen_rejects(void)
{
    static const char *const bad[] = {
        "",           "9464",     "localhost",
        "127.0.0.1",       /* no colon */
        "host:",      ":", /* no port */
        "host:65536", "host:-1",  "host:99999999999999999999",
        "host:80a",   "host:abc", "host:8 0",
        "host:0x50",  "host:80 ", "[::1]", /* the colon found is inside the brackets: port "1]" */
        NULL};
    char host[256];
    int port;

    for (const char *const *b = bad; *b; b++) {
        snprintf(host, sizeof(host), "unchanged");
        port = 4242;
        CHECK_MSG(tly_http_parse_listen(*b, host, sizeof(host), &port) < 0, "\"%s\" accepted", *b);
        CHECK_STR(host, "unchanged");
        CHECK_INT(port, 4242);
    }
end:;
}

/* A host must fit in hostlen with its NUL. */
static void test_listen_host_length(void)
{
    char host[10];
    int port = -1;

    CHECK(tly_http_parse_listen("123456789:1", host, sizeof(host), &port) == 0);
    CHECK_STR(host, "123456789");
    CHECK_INT(port, 1);
    CHECK(tly_http_parse_listen("1234567890:2", host, sizeof(host), &port) < 0);
    CHECK_STR(host, "123456789");
    CHECK_INT(port, 1);
    CHECK(tly_http_parse_listen(":3", host, sizeof(host), &port) == 0);
    CHECK_STR(host, "127.0.0.1");
end:;
}

/* Which --http addresses only this host can reach (no warning without a
 * token). */
static void test_loopback(void)
{
    static const char *const loop[] = {"127.0.0.1:9464", ":9464",    "127.1.2.3:1",
                                       "localhost:80",   "::1:9464", NULL};
    static const char *const open_to_all[] = {
        "0.0.0.0:9464", "10.0.0.5:9464", "::9464", "example.com:80",
        "128.0.0.1:1",  "nocolon",       NULL};
    for (const char *const *a = loop; *a; a++)
        CHECK_MSG(tly_http_loopback(*a), "%s is loopback", *a);
    for (const char *const *a = open_to_all; *a; a++)
        CHECK_MSG(!tly_http_loopback(*a), "%s is not loopback", *a);
end:;
}

/* ---- GET / -------------------------------------------------------------- */

/* The whole file at path (malloc'ed, NUL-terminated), or NULL. */
static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *text = NULL;
    long size;

    if (!f)
        return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (size = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (text = malloc((size_t)size + 1))) {
        if (fread(text, 1, (size_t)size, f) == (size_t)size) {
            text[size] = '\0';
            *len = (size_t)size;
        } else {
            free(text);
            text = NULL;
        }
    }
    fclose(f);
    return text;
}

/* Sends request to 127.0.0.1:port and returns everything the server sent
 * until it closed (malloc'ed, NUL-terminated), or NULL. */
static char *exchange(int port, const char *request, size_t *len)
{
    struct sockaddr_in addr = {0};
    struct timeval timeout = {10, 0};
    char *reply = NULL, *grown;
    size_t cap = 0;
    ssize_t n;
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    *len = 0;
    if (fd < 0)
        return NULL;
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 ||
        write(fd, request, strlen(request)) != (ssize_t)strlen(request))
        goto fail;
    for (;;) {
        if (cap - *len < 4096) {
            if (!(grown = realloc(reply, cap + 65536)))
                goto fail;
            reply = grown;
            cap += 65536;
        }
        if ((n = read(fd, reply + *len, cap - *len - 1)) < 0)
            goto fail;
        if (n == 0)
            break;
        *len += (size_t)n;
    }
    reply[*len] = '\0';
    close(fd);
    return reply;
fail:
    free(reply);
    close(fd);
    return NULL;
}

static void test_serves_page(void)
{
    const char *path = TLY_TEST_PAGE_HTML; /* set by tests/CMakeLists.txt */
    tly_metrics *metrics = tly_metrics_new("telemetry");
    tly_http_config cfg = {"127.0.0.1:0", NULL,          "/nonexistent/telemetry.db",
                           "telemetry",   1000,          10,
                           metrics,       "page<views>", 0};
    tly_http *http = NULL;
    char err[512] = "", *file = NULL, *reply = NULL, *expected = NULL;
    const char *body_tag, *body;
    size_t file_len = 0, reply_len, expected_len;
    int port;

    CHECK_MSG((file = read_file(path, &file_len)) != NULL, "cannot read %s", path);
    /* what GET / should send: the file, with the pipeline and the state table
     * (HTML-escaped) in its <body> tag */
    CHECK((body_tag = strstr(file, "<body>")) != NULL);
    CHECK((expected = malloc(file_len + 128)) != NULL);
    expected_len = (size_t)snprintf(
        expected, file_len + 128, "%.*s<body data-pipeline=\"%s\" data-table=\"%s\">%s",
        (int)(body_tag - file), file, "telemetry", "page&lt;views&gt;", body_tag + 6);

    CHECK(metrics != NULL);
    CHECK_MSG(tly_http_start(&cfg, &http, err, sizeof(err)) == 0, "%s", err);
    CHECK((port = tly_http_port(http)) > 0);
    reply = exchange(port, "GET / HTTP/1.0\r\nHost: localhost\r\n\r\n", &reply_len);
    CHECK(reply != NULL);
    CHECK_MSG(strncmp(reply, "HTTP/1.", 7) == 0 && strncmp(reply + 8, " 200 ", 5) == 0, "%.40s",
              reply);
    CHECK(strstr(reply, "\r\nContent-Type: text/html; charset=utf-8\r\n") != NULL);
    CHECK((body = strstr(reply, "\r\n\r\n")) != NULL);
    body += 4;
    CHECK_INT(reply_len - (size_t)(body - reply), expected_len);
    CHECK(memcmp(body, expected, expected_len) == 0);
end:
    tly_http_stop(http);
    tly_metrics_free(metrics);
    free(reply);
    free(expected);
    free(file);
}

static const tly_testcase cases[] = {{"listen_accepts", test_listen_accepts},
                                     {"listen_rejects", test_listen_rejects},
                                     {"listen_host_length", test_listen_host_length},
                                     {"loopback", test_loopback},
                                     {"serves_page", test_serves_page},
                                     {NULL, NULL}};

int main(int argc, char **argv)
{
    return tly_test_main(argc, argv, cases);
}
