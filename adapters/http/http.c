/* adapters/http/http.c - the daemon's HTTP endpoint (see http.h).
 *
 * One event loop thread accepts, reads requests and answers everything but
 * /query itself; /query runs on a small pool of worker threads behind a
 * bounded queue, so a slow statement never delays a probe or a scrape.
 *
 * Connections are tracked by their bufferevent (evhttp 2.1 has no hook for a
 * new connection): the loop holds a reference on each, so the memory stays
 * valid after evhttp is done with it, and a sweep drops the ones evhttp has
 * freed (their callbacks are cleared then). The sweep also closes connections
 * whose request has not arrived whole within the request deadline, however
 * slowly it trickles in. */
#include "http.h"

#include "clock.h"
#include "error.h"
#include "log.h"
#include "query.h"
#include "utf8.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_SQL_BYTES 65536
#define MAX_HEADERS_BYTES 8192    /* request line and headers together: 431 beyond */
#define HEADERS_HARD_LIMIT 65536  /* libevent stops reading there (400, connection closed) */
#define REQUEST_DEADLINE_MS 10000 /* the whole request, head and body, from the accept */
#define IO_TIMEOUT_S 30           /* a write to a client that does not read */
#define QUERY_WORKERS 2
#define QUERY_QUEUE 8       /* /query waiting for a worker; more get 503 */
#define ACCEPT_PAUSE_MS 250 /* the listener rests this long when out of descriptors */
#define SWEEP_EVERY_MS 100
#define DROP_BATCH 16 /* idle connections closed at once to make room */
/* Descriptors kept free for SQLite (the state, its WAL and shm, /query's
 * connections), snapshots and the Kafka clients: a quarter of the limit, at
 * least FD_RESERVE_MIN. */
#define FD_RESERVE_MIN 128
#define MAX_CONNECTIONS_CAP 65536
#define STR_(x) #x
#define STR(x) STR_(x)

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

struct job;

/* One accepted connection (loop thread only). */
struct conn {
    struct bufferevent *bev; /* referenced: valid until the sweep lets go */
    int64_t since_ms;        /* when its current request began */
    bool busy;               /* the request is in; its answer is being made or sent */
    bool dropped;            /* shut by conn_drop, not yet freed by evhttp */
    struct job *job;         /* the /query it waits for, or NULL */
    struct conn *prev, *next;
};

/* One /query: made on the loop, run by a worker, answered on the loop. */
struct job {
    struct evhttp_request *req; /* loop thread only; NULL once the client is gone */
    struct conn *conn;
    char *sql;
    /* the worker's answer */
    int code;
    const char *reason;
    struct evbuffer *body;
    struct job *next;
};

struct tly_http {
    struct event_base *base;
    struct evhttp *http;
    struct evconnlistener *listener;
    struct event *tick, *done_ev, *resume_ev;
    pthread_t thread;
    bool running;
    atomic_bool stop;
    int port;
    /* copies: the server owns nothing of its caller but the metrics */
    char *token, *db_path, *pipeline, *table;
    int64_t query_timeout_ms, max_rows, max_bytes;
    tly_metrics *metrics;

    /* connections (loop thread) */
    struct conn *conns_head, *conns_tail;
    struct bufferevent *accepting; /* made by make_bev, not yet in the list */
    int nconns, dropping, max_conns, fd_ceiling;
    bool paused;

    /* the query pool: queue and done list under lock */
    pthread_mutex_t lock;
    pthread_cond_t wake;
    struct job *queue_head, *queue_tail, *done;
    int queued;
    atomic_bool stop_workers;
    pthread_t workers[QUERY_WORKERS];
    int nworkers;
    int done_fd; /* eventfd: a worker finished a job */
};

static tly_log_limit accept_limit, evict_limit, libevent_limit;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

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

bool tly_http_loopback(const char *listen)
{
    char host[256];
    int port;
    struct in_addr a4;
    struct in6_addr a6;
    if (tly_http_parse_listen(listen, host, sizeof(host), &port) < 0)
        return false;
    if (strcmp(host, "localhost") == 0)
        return true;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, host, &a6) == 1)
        return IN6_IS_ADDR_LOOPBACK(&a6);
    return false;
}

/* ---- JSON ---------------------------------------------------------------- */

/* s as a JSON string. Valid UTF-8 is copied; each byte that does not start a
 * valid sequence becomes U+FFFD, so the document is valid JSON whatever the
 * state holds (text written by another tool, blobs). */
static void put_string(struct evbuffer *out, const char *s, size_t n)
{
    size_t i = 0;
    evbuffer_add(out, "\"", 1);
    while (i < n) {
        size_t run = i;
        unsigned char c;
        while (run < n) {
            c = (unsigned char)s[run];
            if (c < 0x20 || c == '"' || c == '\\' || c >= 0x80)
                break;
            run++;
        }
        if (run > i)
            evbuffer_add(out, s + i, run - i);
        if ((i = run) == n)
            break;
        c = (unsigned char)s[i];
        if (c >= 0x80) {
            size_t len = (c & 0xE0) == 0xC0   ? 2
                         : (c & 0xF0) == 0xE0 ? 3
                         : (c & 0xF8) == 0xF0 ? 4
                                              : 0;
            if (len && i + len <= n && tly_utf8_check(s + i, len) == len) {
                evbuffer_add(out, s + i, len);
                i += len;
            } else {
                evbuffer_add(out, "\\ufffd", 6);
                i++;
            }
            continue;
        }
        switch (c) {
        case '"': evbuffer_add(out, "\\\"", 2); break;
        case '\\': evbuffer_add(out, "\\\\", 2); break;
        case '\n': evbuffer_add(out, "\\n", 2); break;
        case '\r': evbuffer_add(out, "\\r", 2); break;
        case '\t': evbuffer_add(out, "\\t", 2); break;
        default: evbuffer_add_printf(out, "\\u%04x", c);
        }
        i++;
    }
    evbuffer_add(out, "\"", 1);
}

static void put_cstring(struct evbuffer *out, const char *s)
{
    put_string(out, s, strlen(s));
}

/* A real as json-c writes it; Infinity and NaN (SELECT 1e999) have no JSON
 * form and become null. */
static void put_double(struct evbuffer *out, double v)
{
    json_object *d;
    if (!isfinite(v)) {
        evbuffer_add(out, "null", 4);
        return;
    }
    if ((d = json_object_new_double(v))) {
        evbuffer_add_printf(out, "%s", json_object_to_json_string_ext(d, JSON_C_TO_STRING_PLAIN));
        json_object_put(d);
    }
}

/* ---- replies (loop thread) ----------------------------------------------- */

static void reply_buffer(struct evhttp_request *req, int code, const char *reason, const char *type,
                         struct evbuffer *body)
{
    struct evkeyvalq *headers = evhttp_request_get_output_headers(req);
    evhttp_add_header(headers, "Content-Type", type);
    evhttp_add_header(headers, "Cache-Control", "no-store");
    evhttp_send_reply(req, code, reason, body);
}

static void reply(struct evhttp_request *req, int code, const char *reason, const char *type,
                  const char *body, size_t len)
{
    struct evbuffer *out = evbuffer_new();
    if (out)
        evbuffer_add(out, body, len);
    reply_buffer(req, code, reason, type, out);
    if (out)
        evbuffer_free(out);
}

/* {"error": message}: an evbuffer, or NULL when out of memory. */
static struct evbuffer *error_body(const char *message)
{
    struct evbuffer *out = evbuffer_new();
    if (!out)
        return NULL;
    evbuffer_add(out, "{\"error\":", 9);
    put_cstring(out, message);
    evbuffer_add(out, "}", 1);
    return out;
}

/* {"error": message} with the status. */
static void reply_error(struct evhttp_request *req, int code, const char *reason,
                        const char *message)
{
    struct evbuffer *out = error_body(message);
    reply_buffer(req, code, reason, "application/json", out);
    if (out)
        evbuffer_free(out);
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

/* ---- connections (loop thread) ------------------------------------------- */

static bool conn_alive(const struct conn *c)
{
    bufferevent_event_cb eventcb = NULL;
    /* evhttp clears the callbacks when it frees the connection. Not the read
     * callback: evhttp clears that one alone while it writes an answer. */
    bufferevent_getcb(c->bev, NULL, NULL, &eventcb, NULL);
    return eventcb != NULL;
}

static void conn_unlink_free(struct tly_http *h, struct conn *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        h->conns_head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        h->conns_tail = c->prev;
    if (c->job) {
        c->job->req = NULL; /* evhttp freed the request with the connection */
        c->job->conn = NULL;
    }
    h->nconns--;
    if (c->dropped)
        h->dropping--;
    bufferevent_decref(c->bev); /* the last reference: closes the socket */
    free(c);
}

/* Ends a connection the way a client hanging up would: evhttp sees the
 * socket shut and frees the connection itself. */
static void conn_drop(struct tly_http *h, struct conn *c)
{
    evutil_socket_t fd = bufferevent_getfd(c->bev);
    if (fd >= 0)
        shutdown(fd, SHUT_RDWR);
    c->busy = c->dropped = true; /* not dropped twice, no deadline */
    h->dropping++;
}

static struct conn *conn_of(struct tly_http *h, struct evhttp_request *req)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
    for (struct conn *c = h->conns_tail; c && bev; c = c->prev)
        if (c->bev == bev)
            return c;
    return NULL;
}

/* Lets go of the connections evhttp has freed; drops the ones whose request
 * is past the deadline. */
static void sweep(struct tly_http *h)
{
    int64_t now = now_ms();
    struct conn *c = h->conns_head, *next;
    long long suppressed;
    int late = 0;
    for (; c; c = next) {
        next = c->next;
        if (!conn_alive(c)) {
            conn_unlink_free(h, c);
        } else if (!c->busy && now - c->since_ms > REQUEST_DEADLINE_MS) {
            conn_drop(h, c);
            late++;
        }
    }
    if (late && tly_log_limit_take(&evict_limit, 1, &suppressed))
        tly_log("warn", "http_request_deadline",
                "closed=%d deadline_ms=%d suppressed=%lld reason=\"the request did not arrive "
                "whole in time\"",
                late, REQUEST_DEADLINE_MS, suppressed);
}

/* The lowest free descriptor: every one below it is open. */
static int lowest_free_fd(void)
{
    int fd = fcntl(0, F_DUPFD_CLOEXEC, 0);
    if (fd < 0)
        return errno == EMFILE ? INT32_MAX : 0;
    close(fd);
    return fd;
}

static bool crowded(struct tly_http *h)
{
    return h->nconns - h->dropping >= h->max_conns || lowest_free_fd() >= h->fd_ceiling;
}

/* Drops the oldest connections that wait for (or trickle in) a request,
 * up to DROP_BATCH in flight; returns how many are being dropped. */
static int drop_oldest_idle(struct tly_http *h)
{
    for (struct conn *c = h->conns_head; c && h->dropping < DROP_BATCH; c = c->next)
        if (!c->busy && conn_alive(c))
            conn_drop(h, c);
    return h->dropping;
}

static void pause_accepting(struct tly_http *h, int ms)
{
    struct timeval tv = {0, ms * 1000};
    if (h->paused)
        return;
    h->paused = true;
    evconnlistener_disable(h->listener);
    event_add(h->resume_ev, &tv);
}

static void on_resume(evutil_socket_t fd, short what, void *arg)
{
    struct tly_http *h = arg;
    (void)fd;
    (void)what;
    sweep(h);
    h->paused = false;
    evconnlistener_enable(h->listener);
}

/* evhttp's bufferevent for a connection it just accepted: the one place that
 * sees every new connection. Over the cap, the oldest idle connection makes
 * room; with none to drop the listener rests. */
static struct bufferevent *make_bev(struct event_base *base, void *arg)
{
    struct tly_http *h = arg;
    struct bufferevent *bev;
    struct conn *c;
    long long suppressed;

    sweep(h);
    if (crowded(h)) {
        int dropping = drop_oldest_idle(h);
        if (tly_log_limit_take(&accept_limit, 1, &suppressed))
            tly_log("warn", "http_crowded",
                    "connections=%d max_connections=%d fd_ceiling=%d action=%s suppressed=%lld",
                    h->nconns - h->dropping, h->max_conns, h->fd_ceiling,
                    dropping ? "closed_oldest_idle" : "paused_accepting", suppressed);
        /* libevent accepts in a loop until the backlog is empty, and a
         * dropped connection gives its descriptor back only once the loop
         * has seen it close: at the ceiling, let the loop run first. */
        if (!dropping)
            pause_accepting(h, ACCEPT_PAUSE_MS);
        else if (lowest_free_fd() >= h->fd_ceiling)
            pause_accepting(h, 0);
    }
    /* Closed with its last reference, which is the loop's (see sweep). */
    bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    c = calloc(1, sizeof(*c));
    if (!bev || !c) {
        free(c);
        return bev; /* untracked, but served */
    }
    bufferevent_incref(bev);
    c->bev = bev;
    c->since_ms = now_ms();
    c->prev = h->conns_tail;
    if (h->conns_tail)
        h->conns_tail->next = c;
    else
        h->conns_head = c;
    h->conns_tail = c;
    h->nconns++;
    return bev;
}

static void on_accept_resume(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    evconnlistener_enable(arg);
}

/* accept() failed for another reason than "try again": out of descriptors
 * (EMFILE, ENFILE) or memory. libevent would retry at once, forever; rest the
 * listener instead (the tick makes room). arg is the evhttp, not the server:
 * evhttp owns the listener's callback argument. */
static void on_accept_error(struct evconnlistener *listener, void *arg)
{
    int err = EVUTIL_SOCKET_ERROR();
    long long suppressed;
    struct timeval tv = {0, ACCEPT_PAUSE_MS * 1000};
    (void)arg;
    if (tly_log_limit_take(&accept_limit, 1, &suppressed))
        tly_log("warn", "http_accept_error", "error=\"%s\" pause_ms=%d suppressed=%lld",
                evutil_socket_error_to_string(err), ACCEPT_PAUSE_MS, suppressed);
    evconnlistener_disable(listener);
    event_base_once(evconnlistener_get_base(listener), -1, EV_TIMEOUT, on_accept_resume, listener,
                    &tv);
}

static void on_reply_done(struct evhttp_request *req, void *arg)
{
    struct conn *c = arg;
    (void)req;
    /* a kept-alive connection starts its next request's deadline now */
    c->busy = false;
    c->since_ms = now_ms();
}

/* ---- /query -------------------------------------------------------------- */

/* The row sink of a worker: writes the JSON of each row into out, stopping
 * when the answer would grow past max_bytes. */
struct rows {
    struct evbuffer *out;
    size_t max_bytes; /* 0: no limit */
    bool over;
    int count;
    const char *const *names;
    int *from; /* per column: which column's value goes there, -1 none */
    int64_t n;
};

static int on_columns(void *ctx, int count, const char *const *names)
{
    struct rows *r = ctx;
    r->names = names;
    r->count = count;
    if (!(r->from = calloc((size_t)count + 1, sizeof(*r->from))))
        return 1;
    /* A name given twice is one key, at its first place, holding the last
     * column's value (as a JSON object built key by key would). */
    for (int i = 0; i < count; i++) {
        r->from[i] = i;
        for (int j = 0; j < i; j++)
            if (strcmp(names[i], names[j]) == 0) {
                r->from[j] = i;
                r->from[i] = -1;
                break;
            }
        evbuffer_add(r->out, i ? "," : "", i ? 1 : 0);
        put_cstring(r->out, names[i]);
    }
    evbuffer_add(r->out, "],\"rows\":[", 10);
    return 0;
}

static bool over_budget(struct rows *r, size_t more)
{
    if (r->max_bytes && evbuffer_get_length(r->out) + more > r->max_bytes)
        r->over = true;
    return r->over;
}

static int on_row(void *ctx, sqlite3_stmt *stmt)
{
    struct rows *r = ctx;
    bool first = true;
    if (r->n++)
        evbuffer_add(r->out, ",{", 2);
    else
        evbuffer_add(r->out, "{", 1);
    for (int i = 0; i < r->count; i++) {
        int k = r->from[i];
        if (k < 0)
            continue;
        if (!first)
            evbuffer_add(r->out, ",", 1);
        first = false;
        put_cstring(r->out, r->names[i]);
        evbuffer_add(r->out, ":", 1);
        switch (sqlite3_column_type(stmt, k)) {
        case SQLITE_INTEGER:
            evbuffer_add_printf(r->out, "%lld", (long long)sqlite3_column_int64(stmt, k));
            break;
        case SQLITE_FLOAT: put_double(r->out, sqlite3_column_double(stmt, k)); break;
        case SQLITE_NULL: evbuffer_add(r->out, "null", 4); break;
        default: { /* text, and blobs as their bytes */
            const char *text = (const char *)sqlite3_column_text(stmt, k);
            size_t len = (size_t)sqlite3_column_bytes(stmt, k);
            if (over_budget(r, len))
                return 1;
            put_string(r->out, text ? text : "", text ? len : 0);
        }
        }
    }
    evbuffer_add(r->out, "}", 1);
    return over_budget(r, 0) ? 1 : 0;
}

static void job_answer(struct job *job, int code, const char *reason, struct evbuffer *body)
{
    job->code = code;
    job->reason = reason;
    job->body = body;
}

/* On a worker: runs job->sql and fills in the answer. */
static void run_job(struct tly_http *h, struct job *job)
{
    tly_query_options opts = {.timeout_ms = h->query_timeout_ms,
                              .max_rows = h->max_rows,
                              .max_length = h->max_bytes,
                              .cancel = &h->stop_workers};
    tly_query *q = NULL;
    struct rows r = {.out = evbuffer_new(), .max_bytes = (size_t)h->max_bytes};
    tly_query_sink sink = {on_columns, on_row};
    char err[1024];
    int truncated = 0;
    int64_t n;

    if (!r.out) {
        job_answer(job, 500, "Internal Server Error", error_body("out of memory"));
        return;
    }
    evbuffer_add(r.out, "{\"columns\":[", 12);
    if (tly_query_open(h->db_path, &opts, &q, err, sizeof(err)) < 0) {
        job_answer(job, 503, "Service Unavailable", error_body(err));
        goto done;
    }
    n = tly_query_run(q, job->sql, &sink, &r, &truncated, err, sizeof(err));
    if (r.over || (n < 0 && tly_query_last_error(q) == TLY_QUERY_ERR_TOOBIG)) {
        snprintf(err, sizeof(err),
                 "the result is larger than %lld bytes (--query-max-bytes): select fewer rows or "
                 "columns (LIMIT, substr()), or raise --query-max-bytes",
                 (long long)h->max_bytes);
        job_answer(job, 413, "Content Too Large", error_body(err));
        goto done;
    }
    if (n < 0) {
        switch (tly_query_last_error(q)) {
        case TLY_QUERY_ERR_DENIED: job_answer(job, 403, "Forbidden", error_body(err)); break;
        case TLY_QUERY_ERR_TIMEOUT: job_answer(job, 408, "Request Timeout", error_body(err)); break;
        case TLY_QUERY_ERR_CANCELLED:
            job_answer(job, 503, "Service Unavailable", error_body(err));
            break;
        case TLY_QUERY_ERR_INTERNAL:
            job_answer(job, 500, "Internal Server Error", error_body(err));
            break;
        default: job_answer(job, 400, "Bad Request", error_body(err));
        }
        goto done;
    }
    if (!r.from) { /* on_columns ran out of memory */
        job_answer(job, 500, "Internal Server Error", error_body("out of memory"));
        goto done;
    }
    evbuffer_add_printf(r.out, "],\"row_count\":%lld,\"truncated\":%s}", (long long)n,
                        truncated ? "true" : "false");
    job_answer(job, 200, "OK", r.out);
    r.out = NULL;
done:
    if (r.out)
        evbuffer_free(r.out);
    free(r.from);
    tly_query_close(q);
}

static void *worker(void *arg)
{
    struct tly_http *h = arg;
    uint64_t one = 1;
    for (;;) {
        struct job *job;
        pthread_mutex_lock(&h->lock);
        while (!h->queue_head && !atomic_load(&h->stop_workers))
            pthread_cond_wait(&h->wake, &h->lock);
        if (atomic_load(&h->stop_workers)) {
            pthread_mutex_unlock(&h->lock);
            return NULL;
        }
        job = h->queue_head;
        if (!(h->queue_head = job->next))
            h->queue_tail = NULL;
        h->queued--;
        pthread_mutex_unlock(&h->lock);

        run_job(h, job);

        pthread_mutex_lock(&h->lock);
        job->next = h->done;
        h->done = job;
        pthread_mutex_unlock(&h->lock);
        if (write(h->done_fd, &one, sizeof(one)) < 0) {
            /* the counter cannot overflow at one per job; nothing to do */
        }
    }
}

static void job_free(struct job *job)
{
    if (job->body)
        evbuffer_free(job->body);
    free(job->sql);
    free(job);
}

/* On the loop: answers the finished jobs whose client is still there. */
static void on_jobs_done(evutil_socket_t fd, short what, void *arg)
{
    struct tly_http *h = arg;
    struct job *done;
    uint64_t count;
    (void)what;
    if (read(fd, &count, sizeof(count)) < 0) {
        /* EAGAIN: another wake-up already took the count */
    }
    pthread_mutex_lock(&h->lock);
    done = h->done;
    h->done = NULL;
    pthread_mutex_unlock(&h->lock);
    while (done) {
        struct job *job = done;
        done = job->next;
        if (job->conn) {
            job->conn->job = NULL;
            if (!conn_alive(job->conn))
                job->req = NULL;
        }
        if (job->req) {
            if (job->body)
                reply_buffer(job->req, job->code, job->reason, "application/json", job->body);
            else
                reply_error(job->req, 500, "Internal Server Error", "out of memory");
        }
        job_free(job);
    }
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

/* Queues the query for a worker; a full queue is 503 with Retry-After. */
static void serve_query(struct tly_http *h, struct evhttp_request *req,
                        const struct evhttp_uri *uri, struct conn *conn)
{
    struct job *job;
    char *sql = request_sql(req, uri);
    bool full;

    if (!sql) {
        reply_error(req, 400, "Bad Request",
                    "give the SQL as sql=... (query string or form body, at most 64 KiB), or as "
                    "the request body");
        return;
    }
    if (!(job = calloc(1, sizeof(*job)))) {
        free(sql);
        reply_error(req, 500, "Internal Server Error", "out of memory");
        return;
    }
    job->req = req;
    job->sql = sql;
    pthread_mutex_lock(&h->lock);
    full = h->queued >= QUERY_QUEUE;
    if (!full) {
        if (h->queue_tail)
            h->queue_tail->next = job;
        else
            h->queue_head = job;
        h->queue_tail = job;
        h->queued++;
        pthread_cond_signal(&h->wake);
    }
    pthread_mutex_unlock(&h->lock);
    if (full) {
        job_free(job);
        evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", "1");
        reply_error(req, 503, "Service Unavailable",
                    "too many queries at once (" STR(QUERY_WORKERS) " running, " STR(
                        QUERY_QUEUE) " waiting): try again in a second");
        return;
    }
    /* From here the job is the workers'; only the loop touches job->req
     * and job->conn, and the worker touches neither. */
    if (conn) {
        conn->job = job;
        job->conn = conn;
    }
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

/* The size of the request line and headers, about as they came. */
static size_t head_bytes(struct evhttp_request *req)
{
    const struct evkeyval *kv;
    const char *uri = evhttp_request_get_uri(req);
    size_t n = uri ? strlen(uri) + 16 : 16;
    for (kv = evhttp_request_get_input_headers(req)->tqh_first; kv; kv = kv->next.tqe_next)
        n += strlen(kv->key) + strlen(kv->value) + 4;
    return n;
}

static void on_request(struct evhttp_request *req, void *arg)
{
    struct tly_http *h = arg;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    struct conn *conn = conn_of(h, req);

    /* The request is in: no deadline while it is answered. */
    if (conn) {
        conn->busy = true;
        evhttp_request_set_on_complete_cb(req, on_reply_done, conn);
    }
    if (head_bytes(req) > MAX_HEADERS_BYTES) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
        reply_error(
            req, 431, "Request Header Fields Too Large",
            "the request line and headers are larger than " STR(MAX_HEADERS_BYTES) " bytes");
        return;
    }
    if (!path || !*path)
        path = "/";
    if (strcmp(path, "/query") == 0) {
        if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_POST) {
            reply_error(req, 405, "Method Not Allowed", "use GET or POST");
            return;
        }
        if (authorized(h, req))
            serve_query(h, req, uri, conn);
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

/* Checks the stop flag (the daemon's thread cannot call into this event base
 * safely) and sweeps the connections; out of descriptors, it makes room. */
static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct tly_http *h = arg;
    (void)fd;
    (void)what;
    if (atomic_load(&h->stop)) {
        event_base_loopbreak(h->base);
        return;
    }
    sweep(h);
    if (crowded(h))
        drop_oldest_idle(h);
}

/* libevent's own messages (warnings about sockets, mostly) go through the
 * log, at most a few a second: a failing accept() used to write one per
 * attempt, hundreds of thousands a second. */
static void on_libevent_log(int severity, const char *msg)
{
    static const char *const levels[] = {"debug", "info", "warn", "error"};
    long long suppressed;
    char quoted[600];
    if (severity < EVENT_LOG_MSG || !tly_log_limit_take(&libevent_limit, 5, &suppressed))
        return;
    tly_log(levels[severity > EVENT_LOG_ERR ? EVENT_LOG_ERR : severity], "libevent",
            "message=%s suppressed=%lld", tly_log_quote(msg, quoted, sizeof(quoted)), suppressed);
}

static void set_libevent_log(void)
{
    event_set_log_callback(on_libevent_log);
}

static void *serve(void *arg)
{
    struct tly_http *h = arg;
    event_base_dispatch(h->base);
    return NULL;
}

static void stop_workers(struct tly_http *h)
{
    pthread_mutex_lock(&h->lock);
    atomic_store(&h->stop_workers, true);
    pthread_cond_broadcast(&h->wake);
    pthread_mutex_unlock(&h->lock);
    for (int i = 0; i < h->nworkers; i++)
        pthread_join(h->workers[i], NULL);
    h->nworkers = 0;
}

static void destroy(struct tly_http *h)
{
    struct job *job;
    stop_workers(h);
    /* The connections go with evhttp, their requests with them: the jobs
     * are dropped unanswered. */
    if (h->http)
        evhttp_free(h->http);
    while (h->conns_head)
        conn_unlink_free(h, h->conns_head);
    while ((job = h->queue_head)) {
        h->queue_head = job->next;
        job_free(job);
    }
    while ((job = h->done)) {
        h->done = job->next;
        job_free(job);
    }
    if (h->tick)
        event_free(h->tick);
    if (h->done_ev)
        event_free(h->done_ev);
    if (h->resume_ev)
        event_free(h->resume_ev);
    if (h->base)
        event_base_free(h->base);
    if (h->done_fd >= 0)
        close(h->done_fd);
    pthread_mutex_destroy(&h->lock);
    pthread_cond_destroy(&h->wake);
    free(h->token);
    free(h->db_path);
    free(h->pipeline);
    free(h->table);
    free(h);
}

/* The connection cap and the descriptor ceiling from RLIMIT_NOFILE: a
 * quarter of the descriptors (at least FD_RESERVE_MIN) stay for everything
 * but HTTP connections. */
static void set_limits(struct tly_http *h)
{
    struct rlimit rl;
    long long limit = 1024, reserve;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        limit = rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > (1 << 20) ? 1 << 20
                                                                        : (long long)rl.rlim_cur;
    reserve = limit / 4 > FD_RESERVE_MIN ? limit / 4 : FD_RESERVE_MIN;
    h->fd_ceiling = limit - reserve > 16 ? (int)(limit - reserve) : 16;
    h->max_conns = h->fd_ceiling < MAX_CONNECTIONS_CAP ? h->fd_ceiling : MAX_CONNECTIONS_CAP;
}

int tly_http_start(const tly_http_config *cfg, tly_http **out, char *errbuf, size_t errlen)
{
    static pthread_once_t log_once = PTHREAD_ONCE_INIT;
    struct tly_http *h = calloc(1, sizeof(*h));
    struct evhttp_bound_socket *bound;
    struct timeval every = {0, SWEEP_EVERY_MS * 1000};
    char host[256];
    int port;

    *out = NULL;
    if (!h)
        return tly_error(errbuf, errlen, "out of memory");
    h->done_fd = -1;
    pthread_mutex_init(&h->lock, NULL);
    pthread_cond_init(&h->wake, NULL);
    if (tly_http_parse_listen(cfg->listen, host, sizeof(host), &port) < 0) {
        destroy(h);
        return tly_error(errbuf, errlen, "--http wants HOST:PORT, e.g. 127.0.0.1:9464, not \"%s\"",
                         cfg->listen);
    }
    pthread_once(&log_once, set_libevent_log);
    h->token = cfg->token ? strdup(cfg->token) : NULL;
    h->db_path = strdup(cfg->db_path);
    h->pipeline = strdup(cfg->pipeline);
    h->table = cfg->table ? strdup(cfg->table) : NULL;
    h->query_timeout_ms = cfg->query_timeout_ms;
    h->max_rows = cfg->max_rows;
    h->max_bytes = cfg->max_bytes;
    h->metrics = cfg->metrics;
    set_limits(h);
    if (!h->db_path || !h->pipeline || (cfg->table && !h->table) || (cfg->token && !h->token) ||
        (h->done_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0 ||
        !(h->base = event_base_new()) || !(h->http = evhttp_new(h->base)) ||
        !(h->tick = event_new(h->base, -1, EV_PERSIST, on_tick, h)) ||
        !(h->resume_ev = evtimer_new(h->base, on_resume, h)) ||
        !(h->done_ev = event_new(h->base, h->done_fd, EV_READ | EV_PERSIST, on_jobs_done, h))) {
        destroy(h);
        return tly_error(errbuf, errlen, "cannot set up the HTTP server");
    }
    /* Every method reaches on_request, which says what each path allows. */
    evhttp_set_allowed_methods(h->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                            EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                            EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
    evhttp_set_max_body_size(h->http, MAX_SQL_BYTES);
    evhttp_set_max_headers_size(h->http, HEADERS_HARD_LIMIT);
    evhttp_set_timeout(h->http, IO_TIMEOUT_S);
    evhttp_set_bevcb(h->http, make_bev, h);
    evhttp_set_gencb(h->http, on_request, h);
    if (!(bound = evhttp_bind_socket_with_handle(h->http, host, (ev_uint16_t)port))) {
        destroy(h);
        return tly_error(errbuf, errlen,
                         "cannot listen on %s:%d (in use by another process? pick another "
                         "address with --http HOST:PORT, or --http off)",
                         host, port);
    }
    h->listener = evhttp_bound_socket_get_listener(bound);
    evconnlistener_set_error_cb(h->listener, on_accept_error);
    {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        evutil_socket_t fd = evhttp_bound_socket_get_fd(bound);
        h->port = port;
        if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0 && ss.ss_family == AF_INET)
            h->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    }
    event_add(h->tick, &every);
    event_add(h->done_ev, NULL);
    for (; h->nworkers < QUERY_WORKERS; h->nworkers++)
        if (pthread_create(&h->workers[h->nworkers], NULL, worker, h) != 0) {
            destroy(h);
            return tly_error(errbuf, errlen, "cannot start the /query threads");
        }
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
