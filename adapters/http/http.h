/* adapters/http/http.h - the daemon's HTTP endpoint (libevent evhttp, own thread).
 *
 *   GET  /          a live page: throughput, lag, latency, recent windows
 *   GET  /metrics   Prometheus text format (adapters/http/metrics.h)
 *   GET  /healthz   200 while the process serves
 *   GET  /readyz    200 once recovered and consuming, else 503
 *   GET  /query?sql=...        read-only SQL on the live state, JSON rows
 *   POST /query   (form sql=... or the SQL as the body)
 *
 * /query and /metrics need "Authorization: Bearer <token>" when a token is
 * set; the probes and the page do not (the page asks for the token and sends
 * it itself). Each /query opens its own read-only connection (engine/query.h:
 * read-only file, query_only, defensive, authorizer), is interrupted after
 * query_timeout_ms, returns at most max_rows rows and at most max_bytes bytes
 * of JSON (413 beyond; no single value may be longer either).
 *
 * Built to keep answering the probes whatever clients do:
 *   - /query runs on 2 worker threads with 8 more waiting at most (503 and
 *     Retry-After: 1 beyond); everything else is answered on the HTTP
 *     thread at once, never behind a query.
 *   - A request (line, headers and body) must arrive whole within 10 s of
 *     the connection (or of the previous answer on a kept-alive one), however
 *     it trickles in; the request line and headers are 8 KiB at most.
 *   - Connections stop at a ceiling below RLIMIT_NOFILE (a quarter of it, at
 *     least 128 descriptors, stay for SQLite, snapshots and Kafka): a new
 *     connection over it closes the oldest idle one, and with none idle the
 *     listener rests 250 ms. An accept() that fails (EMFILE) rests it too.
 *   - JSON is always valid: text and blobs are JSON strings of their bytes,
 *     each byte that is not part of valid UTF-8 replaced by U+FFFD; a real
 *     that is not finite (1e999) is null. */
#ifndef TLY_HTTP_H
#define TLY_HTTP_H

#include "metrics.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct tly_http tly_http;

typedef struct tly_http_config {
    const char *listen;   /* "HOST:PORT" */
    const char *token;    /* NULL: no token */
    const char *db_path;  /* the state database /query reads */
    const char *pipeline; /* for the page */
    int64_t query_timeout_ms;
    int64_t max_rows;
    tly_metrics *metrics; /* borrowed; must outlive the server */
    const char *table;    /* the state table the page lists (a pipeline file's
                             @state table), or NULL for a built-in pipeline's */
    int64_t max_bytes;    /* a /query answer's size at most; 0: no limit */
} tly_http_config;

/* Parses an --http address, "HOST:PORT", without resolving anything.
 *
 * The address is split at its last ':'. PORT is a decimal number from 0 to
 * 65535, as strtol reads it (0: any free port, which tly_http_port reports
 * for an IPv4 address).
 * HOST is the text before the colon, copied as it is; an empty HOST
 * (":9464") means 127.0.0.1. So an IPv6 address is written without brackets,
 * "::1:9464"; a bracketed "[::1]:9464" keeps its brackets in HOST, which the
 * server then cannot bind.
 *
 * Returns 0 with HOST NUL-terminated in host (hostlen >= 10, room for
 * "127.0.0.1") and PORT in *port. Returns -1, leaving host and *port alone,
 * when there is no colon, PORT is empty, not a number or out of range, or
 * HOST does not fit in hostlen. */
int tly_http_parse_listen(const char *listen, char *host, size_t hostlen, int *port);

/* True when the --http address is a loopback one (127.0.0.0/8, ::1,
 * localhost): only this host can reach it. */
bool tly_http_loopback(const char *listen);

/* Binds and starts serving on a thread of its own. Returns 0 and *out, or -1
 * with errbuf (address in use, bad address). */
int tly_http_start(const tly_http_config *cfg, tly_http **out, char *errbuf, size_t errlen);

/* Stops the thread and closes the socket. NULL is fine. */
void tly_http_stop(tly_http *http);

/* The port actually bound (useful with port 0). */
int tly_http_port(const tly_http *http);

#endif
