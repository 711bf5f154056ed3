/* adapters/influx/influx.h - InfluxDB's HTTP query API: a blocking client.
 *
 * A statement (influxql.h builds it, and describes the data model tally
 * reads) is sent as GET <url>/query?db=<database>[&rp=<rp>]&epoch=ms&q=<statement>,
 * which InfluxDB 1.x and the v1 compatibility API of 2.x both answer; the
 * JSON answer is parsed by tly_influx_parse (influxql.h). Authentication is
 * optional: HTTP Basic with a username and password (1.x users, or 2.x with
 * the token as password) or `Authorization: Token ...`.
 *
 * A client is a blocking HTTP/1.1 connection (libevent's evhttp on a private
 * event base), kept alive between statements. Not thread-safe: one thread per
 * client. */
#ifndef TLY_INFLUX_H
#define TLY_INFLUX_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

/* tly_influx_query's result when the cancel flag stopped it. */
#define TLY_INFLUX_CANCELLED (-2)

typedef struct tly_influx tly_influx;

typedef struct tly_influx_options {
    const char *url;              /* http://HOST[:PORT][/PATH]; default port 8086 */
    const char *database;         /* required; on 2.x, a database mapped to the bucket */
    const char *retention_policy; /* NULL or "": the database's default */
    const char *username;         /* Basic auth, with password; NULL for none */
    const char *password;
    const char *token; /* "Authorization: Token ..."; NULL for none; not with username */
    int timeout_ms;    /* per request: connect, send and receive; <= 0: 30 s */
} tly_influx_options;

/* Checks the options and creates a client; nothing is sent until the first
 * query. The client copies what it needs from opts. Returns 0 and *client, or
 * -1 with errbuf (a URL that is not http://, a missing database, username
 * without password, both Basic and token authentication). */
int tly_influx_open(const tly_influx_options *opts, tly_influx **client, char *errbuf,
                    size_t errlen);

/* Closes the connection and frees the client. NULL is a no-op. */
void tly_influx_close(tly_influx *client);

/* While *flag is non-zero a query in progress is abandoned within 100 ms
 * (for a signal handler's volatile flag). flag is borrowed; NULL unsets it. */
void tly_influx_set_cancel(tly_influx *client, volatile sig_atomic_t *flag);

/* Sends one InfluxQL statement and waits for the whole answer. On HTTP 200
 * returns 0 with *body (NUL-terminated JSON, owned by the client, valid until
 * the next query or close) and *len. Otherwise returns -1 with errbuf: a
 * connection failure or timeout, or an HTTP error with its status and the
 * server's "error" message; TLY_INFLUX_CANCELLED when the cancel flag was set.
 * An "error" inside a 200 answer is found by tly_influx_parse. */
int tly_influx_query(tly_influx *client, const char *statement, const char **body, size_t *len,
                     char *errbuf, size_t errlen);

/* The request target for a statement, e.g.
 * "/query?db=telemetry&epoch=ms&q=SELECT%20..." (path_prefix "" or "/influx";
 * rp NULL for none). Every value is percent-encoded (RFC 3986 unreserved
 * characters stay as they are). Returns a malloc'd string, or NULL when out
 * of memory. */
char *tly_influx_request_target(const char *path_prefix, const char *database, const char *rp,
                                const char *statement);

#endif
