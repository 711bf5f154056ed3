/* adapters/http/http.c - the daemon's HTTP endpoint (see http.h). */
#include "http.h"

#include "clock.h"
#include "error.h"
#include "query.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <json-c/json.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define MAX_SQL_BYTES 65536

/* The live page served at GET /: adapters/http/page.html, compiled in by
 * cmake/embed_file.cmake as a NUL-terminated string.
 *
 * One self-contained HTML document, no external resources: it polls /metrics
 * every second and draws three charts on canvases (events applied per second,
 * consumer lag, end-to-end latency p50/p95 from the histogram's deltas), and
 * shows the most recently changed rows of the pipeline's view through /query
 * (a pipeline file's: ten rows of its state table).
 * A token given as #token=... in the address is sent as a bearer token.
 * #status shows the last error of /metrics and the last of /query, each until
 * that endpoint answers again (a successful scrape does not hide a failing
 * /query).
 * After each draw a canvas carries data-points="N" (how many samples it
 * shows), which the headless-browser test reads. serve_page writes the
 * pipeline's name into its <body> tag. */
extern const char tly_http_page[];

struct tly_http {
    struct event_base *base;
    struct evhttp *http;
    struct event *tick;
    pthread_t thread;
    bool running;
    atomic_bool stop;
    int port;
    /* copies: the server owns nothing of its caller but the metrics */
    char *token, *db_path, *pipeline, *table;
    int64_t query_timeout_ms, max_rows;
    tly_metrics *metrics;
};

int tly_http_parse_listen(const char *listen, char *host, size_t hostlen, int *port)
{
    const char *colon = strrchr(listen, ':');
    char *end;
    long p;
    if (!colon || !colon[1])
        return -1;
    p = strtol(colon + 1, &end, 10);
    if (*end || p < 0 || p > 65535 || (size_t)(colon - listen) >= hostlen)
        return -1;
    if (colon == listen)
        snprintf(host, hostlen, "127.0.0.1");
    else
        snprintf(host, hostlen, "%.*s", (int)(colon - listen), listen);
    *port = (int)p;
    return 0;
}

static void reply(struct evhttp_request *req, int code, const char *reason, const char *type,
                  const char *body, size_t len)
{
    struct evbuffer *out = evbuffer_new();
    struct evkeyvalq *headers = evhttp_request_get_output_headers(req);
    evhttp_add_header(headers, "Content-Type", type);
    evhttp_add_header(headers, "Cache-Control", "no-store");
    if (out)
        evbuffer_add(out, body, len);
    evhttp_send_reply(req, code, reason, out);
    if (out)
        evbuffer_free(out);
}

/* {"error": message} with the status. */
static void reply_error(struct evhttp_request *req, int code, const char *reason,
                        const char *message)
{
    json_object *obj = json_object_new_object();
    const char *text;
    json_object_object_add(obj, "error", json_object_new_string(message));
    text = json_object_to_json_string_ext(obj,
                                          JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    reply(req, code, reason, "application/json", text, strlen(text));
    json_object_put(obj);
}

static bool authorized(struct tly_http *h, struct evhttp_request *req)
{
    const char *auth;
    if (!h->token)
        return true;
    auth = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    /* Same length and bytes; the comparison does not stop at the first
     * difference, so its time says nothing about the token. */
    if (auth && strncmp(auth, "Bearer ", 7) == 0 && strlen(auth + 7) == strlen(h->token)) {
        unsigned char diff = 0;
        for (size_t i = 0; h->token[i]; i++)
            diff |= (unsigned char)(auth[7 + i] ^ h->token[i]);
        if (diff == 0)
            return true;
    }
    evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate",
                      "Bearer realm=\"tally\"");
    reply_error(req, 401, "Unauthorized",
                "a bearer token is required (Authorization: Bearer TOKEN)");
    return false;
}

/* ---- /query -------------------------------------------------------------- */

struct rows {
    json_object *columns, *rows;
    const char *const *names;
    int count;
};

static int on_columns(void *ctx, int count, const char *const *names)
{
    struct rows *r = ctx;
    r->names = names;
    r->count = count;
    for (int i = 0; i < count; i++)
        json_object_array_add(r->columns, json_object_new_string(names[i]));
    return 0;
}

static int on_row(void *ctx, sqlite3_stmt *stmt)
{
    struct rows *r = ctx;
    json_object *row = json_object_new_object();
    for (int i = 0; i < r->count; i++) {
        json_object *v = NULL;
        switch (sqlite3_column_type(stmt, i)) {
        case SQLITE_INTEGER: v = json_object_new_int64(sqlite3_column_int64(stmt, i)); break;
        case SQLITE_FLOAT: v = json_object_new_double(sqlite3_column_double(stmt, i)); break;
        case SQLITE_NULL: v = NULL; break;
        default: /* text, and blobs as their bytes */
            v = json_object_new_string_len((const char *)sqlite3_column_text(stmt, i),
                                           sqlite3_column_bytes(stmt, i));
        }
        json_object_object_add(row, r->names[i], v);
    }
    json_object_array_add(r->rows, row);
    return 0;
}

/* The sql parameter of a query string or form body, malloc'ed; NULL if absent. */
static char *form_sql(const char *query)
{
    struct evkeyvalq params;
    const char *sql;
    char *copy = NULL;
    if (!query || evhttp_parse_query_str(query, &params) != 0)
        return NULL;
    if ((sql = evhttp_find_header(&params, "sql")))
        copy = strdup(sql);
    evhttp_clear_headers(&params);
    return copy;
}

static char *request_sql(struct evhttp_request *req, const struct evhttp_uri *uri)
{
    struct evbuffer *in;
    const char *type;
    char *body, *sql;
    size_t len;

    if (evhttp_request_get_command(req) == EVHTTP_REQ_GET)
        return form_sql(evhttp_uri_get_query(uri));
    in = evhttp_request_get_input_buffer(req);
    len = evbuffer_get_length(in);
    if (len > MAX_SQL_BYTES || !(body = malloc(len + 1)))
        return NULL;
    evbuffer_copyout(in, body, len);
    body[len] = '\0';
    type = evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Type");
    /* A form with sql=...; anything else is the SQL itself (text/plain,
     * application/sql, or curl --data 'SELECT ...', which says form). */
    if (type && strncmp(type, "application/x-www-form-urlencoded", 33) == 0 &&
        (sql = form_sql(body))) {
        free(body);
        return sql;
    }
    return body;
}

static void serve_query(struct tly_http *h, struct evhttp_request *req,
                        const struct evhttp_uri *uri)
{
    tly_query_options opts = {h->query_timeout_ms, h->max_rows};
    tly_query *q = NULL;
    struct rows r = {json_object_new_array(), json_object_new_array(), NULL, 0};
    tly_query_sink sink = {on_columns, on_row};
    json_object *result = NULL;
    char *sql = request_sql(req, uri), err[1024];
    int truncated = 0;
    int64_t n;

    if (!sql) {
        reply_error(req, 400, "Bad Request",
                    "give the SQL as sql=... (query string or form body, at most 64 KiB), or as "
                    "the request body");
        goto done;
    }
    if (tly_query_open(h->db_path, &opts, &q, err, sizeof(err)) < 0) {
        reply_error(req, 503, "Service Unavailable", err);
        goto done;
    }
    if ((n = tly_query_run(q, sql, &sink, &r, &truncated, err, sizeof(err))) < 0) {
        switch (tly_query_last_error(q)) {
        case TLY_QUERY_ERR_DENIED: reply_error(req, 403, "Forbidden", err); break;
        case TLY_QUERY_ERR_TIMEOUT: reply_error(req, 408, "Request Timeout", err); break;
        case TLY_QUERY_ERR_INTERNAL: reply_error(req, 500, "Internal Server Error", err); break;
        default: reply_error(req, 400, "Bad Request", err);
        }
        goto done;
    }
    result = json_object_new_object();
    json_object_object_add(result, "columns", r.columns);
    json_object_object_add(result, "rows", r.rows);
    r.columns = r.rows = NULL;
    json_object_object_add(result, "row_count", json_object_new_int64(n));
    json_object_object_add(result, "truncated", json_object_new_boolean(truncated));
    {
        const char *text = json_object_to_json_string_ext(
            result, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
        reply(req, 200, "OK", "application/json", text, strlen(text));
    }
done:
    json_object_put(result);
    json_object_put(r.columns);
    json_object_put(r.rows);
    tly_query_close(q);
    free(sql);
}

/* ---- dispatch ------------------------------------------------------------ */

/* /readyz: NULL when ready, else why not (the 503's body). Not ready while
 * the state is recovered, while the cluster has not answered for
 * 5 s (nothing can commit: the daemon probes it every 2 s when
 * no batch commits, adapters/kafka/housekeeping.c), and while the group
 * gives this instance no partition (it has nothing current to serve). */
static const char *readiness(tly_metrics *m)
{
    static const int64_t contact_ms = 5000;
    int64_t contact = tly_metrics_get(m, TLY_G_BROKER_CONTACT_MS);

    if (!tly_metrics_get(m, TLY_G_READY))
        return "recovering\n";
    if (contact > 0 && tly_clock_wall_ms() - contact > contact_ms)
        return "broker unreachable (no answer for more than 5 s)\n";
    if (tly_metrics_get(m, TLY_G_PARTITIONS_HELD) <= 0)
        return "no partitions assigned\n";
    return NULL;
}

static void serve_page(struct tly_http *h, struct evhttp_request *req)
{
    /* The pipeline (and a pipeline file's state table) go into <body
     * data-pipeline="..." data-table="..."> for the page's query. */
    const char *body = strstr(tly_http_page, "<body>");
    struct evbuffer *out = evbuffer_new();
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/html; charset=utf-8");
    if (out && body) {
        evbuffer_add(out, tly_http_page, (size_t)(body - tly_http_page));
        char *pipeline = evhttp_htmlescape(h->pipeline);
        char *table = evhttp_htmlescape(h->table ? h->table : "");
        evbuffer_add_printf(out, "<body data-pipeline=\"%s\" data-table=\"%s\">",
                            pipeline ? pipeline : "", table ? table : "");
        free(pipeline);
        free(table);
        evbuffer_add(out, body + 6, strlen(body + 6));
    }
    evhttp_send_reply(req, 200, "OK", out);
    if (out)
        evbuffer_free(out);
}

static void on_request(struct evhttp_request *req, void *arg)
{
    struct tly_http *h = arg;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);

    if (!path || !*path)
        path = "/";
    if (strcmp(path, "/query") == 0) {
        if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_POST) {
            reply_error(req, 405, "Method Not Allowed", "use GET or POST");
            return;
        }
        if (authorized(h, req))
            serve_query(h, req, uri);
        return;
    }
    if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
        reply_error(req, 405, "Method Not Allowed", "use GET");
        return;
    }
    if (strcmp(path, "/metrics") == 0) {
        char *text;
        if (!authorized(h, req))
            return;
        if (!(text = tly_metrics_render(h->metrics, h->db_path))) {
            reply_error(req, 500, "Internal Server Error", "out of memory");
            return;
        }
        reply(req, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", text, strlen(text));
        free(text);
    } else if (strcmp(path, "/healthz") == 0) {
        reply(req, 200, "OK", "text/plain", "ok\n", 3);
    } else if (strcmp(path, "/readyz") == 0) {
        const char *why = readiness(h->metrics);
        if (!why)
            reply(req, 200, "OK", "text/plain", "ready\n", 6);
        else
            reply(req, 503, "Service Unavailable", "text/plain", why, strlen(why));
    } else if (strcmp(path, "/") == 0) {
        serve_page(h, req);
    } else {
        reply_error(req, 404, "Not Found",
                    "no such page: try /, /metrics, /healthz, /readyz, /query");
    }
}

/* The loop checks the stop flag a few times a second: the daemon's thread
 * cannot call into this event base safely. */
static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct tly_http *h = arg;
    (void)fd;
    (void)what;
    if (atomic_load(&h->stop))
        event_base_loopbreak(h->base);
}

static void *serve(void *arg)
{
    struct tly_http *h = arg;
    event_base_dispatch(h->base);
    return NULL;
}

static void destroy(struct tly_http *h)
{
    if (h->tick)
        event_free(h->tick);
    if (h->http)
        evhttp_free(h->http);
    if (h->base)
        event_base_free(h->base);
    free(h->token);
    free(h->db_path);
    free(h->pipeline);
    free(h->table);
    free(h);
}

int tly_http_start(const tly_http_config *cfg, tly_http **out, char *errbuf, size_t errlen)
{
    struct tly_http *h = calloc(1, sizeof(*h));
    struct evhttp_bound_socket *bound;
    struct timeval every = {0, 200000};
    char host[256];
    int port;

    *out = NULL;
    if (!h)
        return tly_error(errbuf, errlen, "out of memory");
    if (tly_http_parse_listen(cfg->listen, host, sizeof(host), &port) < 0) {
        destroy(h);
        return tly_error(errbuf, errlen, "--http wants HOST:PORT, e.g. 127.0.0.1:9464, not \"%s\"",
                         cfg->listen);
    }
    h->token = cfg->token ? strdup(cfg->token) : NULL;
    h->db_path = strdup(cfg->db_path);
    h->pipeline = strdup(cfg->pipeline);
    h->table = cfg->table ? strdup(cfg->table) : NULL;
    h->query_timeout_ms = cfg->query_timeout_ms;
    h->max_rows = cfg->max_rows;
    h->metrics = cfg->metrics;
    if (!h->db_path || !h->pipeline || (cfg->table && !h->table) || (cfg->token && !h->token) ||
        !(h->base = event_base_new()) || !(h->http = evhttp_new(h->base)) ||
        !(h->tick = event_new(h->base, -1, EV_PERSIST, on_tick, h))) {
        destroy(h);
        return tly_error(errbuf, errlen, "cannot set up the HTTP server");
    }
    /* Every method reaches on_request, which says what each path allows. */
    evhttp_set_allowed_methods(h->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                            EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                            EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
    evhttp_set_max_body_size(h->http, MAX_SQL_BYTES);
    evhttp_set_timeout(h->http, 30);
    evhttp_set_gencb(h->http, on_request, h);
    if (!(bound = evhttp_bind_socket_with_handle(h->http, host, (ev_uint16_t)port))) {
        destroy(h);
        return tly_error(errbuf, errlen,
                         "cannot listen on %s:%d (in use by another process? pick another "
                         "address with --http HOST:PORT, or --http off)",
                         host, port);
    }
    {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        evutil_socket_t fd = evhttp_bound_socket_get_fd(bound);
        h->port = port;
        if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0 && ss.ss_family == AF_INET)
            h->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    }
    event_add(h->tick, &every);
    if (pthread_create(&h->thread, NULL, serve, h) != 0) {
        destroy(h);
        return tly_error(errbuf, errlen, "cannot start the HTTP thread");
    }
    h->running = true;
    *out = h;
    return 0;
}

int tly_http_port(const tly_http *h)
{
    return h ? h->port : 0;
}

void tly_http_stop(tly_http *h)
{
    if (!h)
        return;
    if (h->running) {
        atomic_store(&h->stop, true);
        pthread_join(h->thread, NULL);
    }
    destroy(h);
}
