/* adapters/influx/influx.c - InfluxDB's HTTP query API: a blocking client on
 * libevent. Statements and their answers are influxql.c's.
 *
 * The client owns a private event base and one evhttp connection. A query
 * runs the base until the request completes, fails, times out, or the cancel
 * flag is seen by a 100 ms timer; so a signal stops a slow query promptly
 * without the caller needing an event loop of its own. libevent retries are
 * off: the caller retries with its own backoff and logs every attempt. */
#include "influx.h"

#include "error.h"

#include <ctype.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_PORT 8086
#define DEFAULT_TIMEOUT_MS 30000
#define CANCEL_CHECK_MS 100
/* Far above a sane chunk's answer; a bigger one means the ranges are too long. */
#define MAX_BODY_BYTES (512u * 1024 * 1024)
#define ERROR_EXCERPT 300

struct tly_influx {
    struct event_base *base;
    struct evhttp_connection *conn;
    struct event *cancel_timer;
    volatile sig_atomic_t *cancel;
    char *host;        /* as given in the URL, for the connection */
    char *host_header; /* host[:port], IPv6 in brackets */
    char *url;         /* scheme://host:port, for messages */
    char *path_prefix; /* "" or "/prefix" without a trailing slash */
    char *database, *retention_policy;
    char *authorization; /* the Authorization header's value, or NULL */
    int port, timeout_ms;
    /* The request in flight. */
    struct evhttp_request *request;
    int done, status, cancelled;
    enum evhttp_request_error request_error;
    int have_request_error;
    char *body;
    size_t body_len;
};

/* ----------------------------------------------------- encoding and copying --- */

static char *copy_string(const char *s)
{
    return s ? strdup(s) : NULL;
}

static int is_unreserved(unsigned char c)
{
    return isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~';
}

/* Appends s percent-encoded to out (which has room: 3 bytes per input byte). */
static char *append_encoded(char *out, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (is_unreserved(*p)) {
            *out++ = (char)*p;
        } else {
            *out++ = '%';
            *out++ = hex[*p >> 4];
            *out++ = hex[*p & 15];
        }
    }
    *out = '\0';
    return out;
}

static char *base64(const char *s)
{
    static const char table[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *in = (const unsigned char *)s;
    size_t len = strlen(s);
    char *out = malloc((len + 2) / 3 * 4 + 1), *o = out;
    if (!out)
        return NULL;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < len ? (uint32_t)in[i + 1] << 8 : 0) |
                     (i + 2 < len ? in[i + 2] : 0);
        *o++ = table[v >> 18 & 63];
        *o++ = table[v >> 12 & 63];
        *o++ = i + 1 < len ? table[v >> 6 & 63] : '=';
        *o++ = i + 2 < len ? table[v & 63] : '=';
    }
    *o = '\0';
    return out;
}

/* ------------------------------------------------------------------ client --- */

static void on_cancel_check(evutil_socket_t fd, short what, void *arg)
{
    tly_influx *c = arg;
    (void)fd;
    (void)what;
    if (c->cancel && *c->cancel && !c->done) {
        /* The request's callback is not called after a cancel; the
         * connection is in an unknown state and is made anew next time. */
        evhttp_cancel_request(c->request);
        c->request = NULL;
        c->cancelled = 1;
        c->done = 1;
        event_base_loopbreak(c->base);
    }
}

static void on_request_error(enum evhttp_request_error error, void *arg)
{
    tly_influx *c = arg;
    c->request_error = error;
    c->have_request_error = 1;
}

static void on_request_done(struct evhttp_request *req, void *arg)
{
    tly_influx *c = arg;
    struct evbuffer *input;
    size_t n;

    c->done = 1;
    c->request = NULL;
    event_base_loopbreak(c->base);
    /* NULL or status 0: no response at all; on_request_error said why. */
    if (!req || (c->status = evhttp_request_get_response_code(req)) == 0)
        return;
    input = evhttp_request_get_input_buffer(req);
    n = evbuffer_get_length(input);
    free(c->body);
    c->body_len = 0;
    if (!(c->body = malloc(n + 1)))
        return; /* reported as out of memory by the caller */
    evbuffer_remove(input, c->body, n);
    c->body[n] = '\0';
    c->body_len = n;
}

static int connect_once(tly_influx *c, char *errbuf, size_t errlen)
{
    struct timeval tv = {c->timeout_ms / 1000, (c->timeout_ms % 1000) * 1000};
    if (c->conn)
        return 0;
    if (!(c->conn = evhttp_connection_base_new(c->base, NULL, c->host, (unsigned short)c->port)))
        return tly_error(errbuf, errlen, "cannot create a connection to %s", c->url);
    evhttp_connection_set_timeout_tv(c->conn, &tv);
    evhttp_connection_set_retries(c->conn, 0);
    evhttp_connection_set_max_body_size(c->conn, MAX_BODY_BYTES);
    return 0;
}

/* Parses opts->url and checks the rest of opts. Returns the parsed URL (the
 * caller frees it with evhttp_uri_free), or NULL with errbuf. */
static struct evhttp_uri *check_options(const tly_influx_options *opts, char *errbuf, size_t errlen)
{
    struct evhttp_uri *uri = NULL;
    const char *scheme, *host;

    if (!opts->url || !*opts->url) {
        tly_error(errbuf, errlen, "no InfluxDB URL");
        return NULL;
    }
    if (!(uri = evhttp_uri_parse_with_flags(opts->url, 0)) ||
        !(scheme = evhttp_uri_get_scheme(uri)) || !(host = evhttp_uri_get_host(uri)) || !*host) {
        tly_error(errbuf, errlen, "\"%s\" is not a URL like http://127.0.0.1:8086", opts->url);
        goto fail;
    }
    if (strcmp(scheme, "http") != 0) {
        tly_error(errbuf, errlen,
                  "\"%s\": only http:// is supported (for HTTPS, put a TLS-terminating proxy "
                  "on the same host)",
                  opts->url);
        goto fail;
    }
    if (evhttp_uri_get_userinfo(uri) || evhttp_uri_get_query(uri) || evhttp_uri_get_fragment(uri)) {
        tly_error(errbuf, errlen,
                  "\"%s\": give credentials with --username/--password or --token, and no "
                  "query or fragment in the URL",
                  opts->url);
        goto fail;
    }
    if (!opts->database || !*opts->database) {
        tly_error(errbuf, errlen, "no InfluxDB database");
        goto fail;
    }
    if ((opts->username && *opts->username) != (opts->password && *opts->password)) {
        tly_error(errbuf, errlen, "a username needs a password, and a password a username");
        goto fail;
    }
    if (opts->username && *opts->username && opts->token && *opts->token) {
        tly_error(errbuf, errlen, "use either a username and password or a token, not both");
        goto fail;
    }
    return uri;
fail:
    if (uri)
        evhttp_uri_free(uri);
    return NULL;
}

/* Where the client connects (host, port, path prefix from uri) and the Host
 * header and message URL made from them. Returns 0, or -1 when out of
 * memory. */
static int set_address(tly_influx *c, const struct evhttp_uri *uri)
{
    const char *host = evhttp_uri_get_host(uri), *path = evhttp_uri_get_path(uri);
    /* An IPv6 literal needs its brackets back in Host and in messages. */
    const char *open = strchr(host, ':') ? "[" : "", *close = *open ? "]" : "";
    size_t plen;

    c->port = evhttp_uri_get_port(uri) > 0 ? evhttp_uri_get_port(uri) : DEFAULT_PORT;
    if (!(c->host = strdup(host)) || !(c->path_prefix = strdup(path ? path : "")))
        return -1;
    plen = strlen(c->path_prefix);
    while (plen > 0 && c->path_prefix[plen - 1] == '/')
        c->path_prefix[--plen] = '\0';
    if (asprintf(&c->host_header, "%s%s%s:%d", open, host, close, c->port) < 0) {
        c->host_header = NULL;
        return -1;
    }
    if (asprintf(&c->url, "http://%s%s", c->host_header, c->path_prefix) < 0) {
        c->url = NULL;
        return -1;
    }
    return 0;
}

/* The Authorization header's value: Basic with the username and password,
 * or the token, or none. Returns 0, or -1 when out of memory. */
static int set_authorization(tly_influx *c, const tly_influx_options *opts)
{
    char *credentials = NULL, *encoded = NULL;
    int rc = -1;

    if (opts->username && *opts->username) {
        if (asprintf(&credentials, "%s:%s", opts->username, opts->password) < 0) {
            credentials = NULL;
            goto done;
        }
        if (!(encoded = base64(credentials)) ||
            asprintf(&c->authorization, "Basic %s", encoded) < 0) {
            c->authorization = NULL;
            goto done;
        }
    } else if (opts->token && *opts->token) {
        if (asprintf(&c->authorization, "Token %s", opts->token) < 0) {
            c->authorization = NULL;
            goto done;
        }
    }
    rc = 0;
done:
    if (credentials) /* holds the password: do not leave it in freed memory */
        memset(credentials, 0, strlen(credentials));
    free(credentials);
    free(encoded);
    return rc;
}

int tly_influx_open(const tly_influx_options *opts, tly_influx **client, char *errbuf,
                    size_t errlen)
{
    struct evhttp_uri *uri;
    tly_influx *c = NULL;
    int rc = -1;

    *client = NULL;
    if (!(uri = check_options(opts, errbuf, errlen)))
        return -1;
    if (!(c = calloc(1, sizeof(*c))))
        goto done;
    c->timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms : DEFAULT_TIMEOUT_MS;
    c->database = strdup(opts->database);
    c->retention_policy = copy_string(opts->retention_policy);
    if (!c->database || (opts->retention_policy && !c->retention_policy) ||
        set_address(c, uri) < 0 || set_authorization(c, opts) < 0 ||
        !(c->base = event_base_new()) ||
        !(c->cancel_timer = event_new(c->base, -1, EV_PERSIST, on_cancel_check, c)))
        goto done;
    *client = c;
    c = NULL;
    rc = 0;
done:
    if (rc < 0)
        tly_error(errbuf, errlen, "out of memory");
    evhttp_uri_free(uri);
    tly_influx_close(c);
    return rc;
}

void tly_influx_close(tly_influx *c)
{
    if (!c)
        return;
    if (c->conn)
        evhttp_connection_free(c->conn);
    if (c->cancel_timer)
        event_free(c->cancel_timer);
    if (c->base)
        event_base_free(c->base);
    if (c->authorization)
        memset(c->authorization, 0, strlen(c->authorization));
    free(c->authorization);
    free(c->host);
    free(c->host_header);
    free(c->url);
    free(c->path_prefix);
    free(c->database);
    free(c->retention_policy);
    free(c->body);
    free(c);
}

void tly_influx_set_cancel(tly_influx *c, volatile sig_atomic_t *flag)
{
    c->cancel = flag;
}

char *tly_influx_request_target(const char *path_prefix, const char *database, const char *rp,
                                const char *statement)
{
    size_t n = strlen(path_prefix) +
               3 * (strlen(database) + (rp ? strlen(rp) : 0) + strlen(statement)) + 64;
    char *target = malloc(n), *o;
    if (!target)
        return NULL;
    o = target + sprintf(target, "%s/query?db=", path_prefix);
    o = append_encoded(o, database);
    if (rp && *rp) {
        o = stpcpy(o, "&rp=");
        o = append_encoded(o, rp);
    }
    o = stpcpy(o, "&epoch=ms&q=");
    append_encoded(o, statement);
    return target;
}

static const char *request_error_text(tly_influx *c)
{
    if (!c->have_request_error)
        return "no response (connection refused or closed)";
    switch (c->request_error) {
    case EVREQ_HTTP_TIMEOUT: return "timed out";
    case EVREQ_HTTP_EOF: return "connection refused or closed before a response";
    case EVREQ_HTTP_INVALID_HEADER: return "invalid response header";
    case EVREQ_HTTP_BUFFER_ERROR: return "read or write error on the connection";
    case EVREQ_HTTP_REQUEST_CANCEL: return "request cancelled";
    case EVREQ_HTTP_DATA_TOO_LONG: return "response too large";
    }
    return "request failed";
}

/* The "error" message of an InfluxDB error answer, else the body's start. */
static void describe_error_body(const char *body, size_t len, char *out, size_t outlen)
{
    json_object *root = json_tokener_parse(body), *error;
    if (root && json_object_object_get_ex(root, "error", &error) &&
        json_object_is_type(error, json_type_string))
        snprintf(out, outlen, "%s", json_object_get_string(error));
    else
        snprintf(out, outlen, "%.*s", (int)(len < ERROR_EXCERPT ? len : ERROR_EXCERPT), body);
    json_object_put(root);
    for (char *p = out; *p; p++) /* one line in the logs */
        if (*p == '\n' || *p == '\r')
            *p = ' ';
}

/* A GET with tally's headers, whose end (or failure) is reported to c.
 * NULL when out of memory. */
static struct evhttp_request *new_request(tly_influx *c)
{
    struct evhttp_request *req = evhttp_request_new(on_request_done, c);
    struct evkeyvalq *headers;

    if (!req)
        return NULL;
    evhttp_request_set_error_cb(req, on_request_error);
    headers = evhttp_request_get_output_headers(req);
    evhttp_add_header(headers, "Host", c->host_header);
    evhttp_add_header(headers, "Accept", "application/json");
    evhttp_add_header(headers, "User-Agent", "tally");
    if (c->authorization)
        evhttp_add_header(headers, "Authorization", c->authorization);
    return req;
}

/* Reports an answer that is not HTTP 200: its status and the server's
 * message, with a hint for the statuses of refused credentials. Returns -1. */
static int http_error(const tly_influx *c, char *errbuf, size_t errlen)
{
    char message[ERROR_EXCERPT + 1];

    describe_error_body(c->body, c->body_len, message, sizeof(message));
    if (c->status == 401 || c->status == 403)
        return tly_error(errbuf, errlen, "%s: HTTP %d: %s (check --username/--password or --token)",
                         c->url, c->status, message);
    return tly_error(errbuf, errlen, "%s: HTTP %d: %s", c->url, c->status, message);
}

int tly_influx_query(tly_influx *c, const char *statement, const char **body, size_t *len,
                     char *errbuf, size_t errlen)
{
    struct timeval check = {0, CANCEL_CHECK_MS * 1000};
    struct evhttp_request *req;
    char *target = NULL;
    int rc = -1;

    *body = NULL;
    *len = 0;
    if (c->cancel && *c->cancel)
        return TLY_INFLUX_CANCELLED;
    if (connect_once(c, errbuf, errlen) < 0)
        return -1;
    if (!(target = tly_influx_request_target(c->path_prefix, c->database, c->retention_policy,
                                             statement)))
        return tly_error(errbuf, errlen, "out of memory");
    c->done = c->status = c->cancelled = c->have_request_error = 0;
    if (!(req = new_request(c))) {
        tly_error(errbuf, errlen, "out of memory");
        goto done;
    }
    c->request = req;
    /* evhttp_make_request frees req itself when it fails. */
    if (evhttp_make_request(c->conn, req, EVHTTP_REQ_GET, target) < 0) {
        c->request = NULL;
        tly_error(errbuf, errlen, "cannot send a request to %s", c->url);
        goto reset;
    }
    event_add(c->cancel_timer, &check);
    while (!c->done)
        if (event_base_loop(c->base, EVLOOP_ONCE) < 0)
            break;
    event_del(c->cancel_timer);
    if (c->cancelled) {
        rc = TLY_INFLUX_CANCELLED;
        tly_error(errbuf, errlen, "cancelled");
        goto reset;
    }
    if (!c->done) {
        tly_error(errbuf, errlen, "%s: the event loop failed", c->url);
        goto reset;
    }
    if (c->status == 0) {
        tly_error(errbuf, errlen, "%s: %s", c->url, request_error_text(c));
        goto reset;
    }
    if (!c->body) {
        tly_error(errbuf, errlen, "out of memory reading the answer of %s", c->url);
        goto done;
    }
    if (c->status != 200) {
        http_error(c, errbuf, errlen);
        goto done;
    }
    *body = c->body;
    *len = c->body_len;
    rc = 0;
    goto done;
reset:
    /* After a failure the connection may be half-used: start afresh. */
    if (c->conn) {
        evhttp_connection_free(c->conn);
        c->conn = NULL;
    }
done:
    free(target);
    return rc;
}
