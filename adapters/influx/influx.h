/* adapters/influx/influx.h - reading vehicle telemetry from InfluxDB over HTTP.
 *
 * The data model tally reads (see also README.md, "tally ingest influxdb"):
 *
 *   measurement  telemetry             (any name: tly_influx_model.measurement)
 *   tags         pod=<pod>             the pod (site, gateway) that reported the point
 *                vin=<VIN>             the vehicle; or device=<id> when a resource
 *                                      map translates (pod, device) into the VIN
 *   fields       one per sensor        speed=12.5,rpm=3000i,door="open",ok=true
 *   time         the reading's time    (written with precision=ms or finer)
 *
 * In line protocol: `telemetry,pod=a,vin=WVW123 speed=12.5,rpm=3000i 1732170000000`.
 * One point may carry any subset of the sensors; a field absent from a point
 * is no reading. This is InfluxDB's natural shape for a device that reports
 * several values at once: one series per (pod, vehicle), a column per sensor.
 *
 * A range of one pod is read with one InfluxQL statement:
 *
 *   SELECT *::field FROM "telemetry" WHERE "pod" = 'a'
 *     AND time >= 1732170000000ms AND time < 1732170002000ms GROUP BY "vin"
 *
 * sent as GET <url>/query?db=<database>[&rp=<rp>]&epoch=ms&q=<statement>, which
 * InfluxDB 1.x and the v1 compatibility API of 2.x both answer. `*::field`
 * keeps other tags out of the columns; GROUP BY puts the device tag on each
 * series. Authentication is optional: HTTP Basic with a username and password
 * (1.x users, or 2.x with the token as password) or `Authorization: Token ...`.
 *
 * A client is a blocking HTTP/1.1 connection (libevent's evhttp on a private
 * event base), kept alive between statements. Not thread-safe: one thread per
 * client. */
#ifndef TLY_INFLUX_H
#define TLY_INFLUX_H

#include <json-c/json.h>
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

/* Where the readings are: see the top of this file. */
typedef struct tly_influx_model {
    const char *measurement; /* e.g. "telemetry" */
    const char *pod_tag;     /* e.g. "pod" */
    const char *device_tag;  /* e.g. "vin", or "device" with a resource map */
} tly_influx_model;

/* Writes the SELECT of one pod's readings in [from_ms, to_ms) into buf.
 * Identifiers are double-quoted and string literals single-quoted, with
 * backslash escapes, so any name or pod is safe. Returns 0, or -1 with errbuf
 * when buf is too small or the range is empty. */
int tly_influx_build_select(const tly_influx_model *model, const char *pod, int64_t from_ms,
                            int64_t to_ms, char *buf, size_t buflen, char *errbuf, size_t errlen);

/* Called once per reading (a non-null field of a point). device is the value
 * of the device tag ("" when the point has none); value is borrowed for the
 * call (take a reference with json_object_get to keep it). Return 0 to go
 * on, or -1 with errbuf to stop the parse with that error. */
typedef int (*tly_influx_reading_fn)(void *opaque, const char *device, const char *sensor,
                                     int64_t time_ms, json_object *value, char *errbuf,
                                     size_t errlen);

/* Parses an answer of /query ({"results":[{"statement_id":0,"series":[{"name":..,
 * "tags":{..},"columns":["time",..],"values":[[..],..]}]}]}) and calls fn for
 * every reading, in the answer's order. Returns 0; or -1 with errbuf for a body
 * that is not such JSON, an "error" at the top or in a result (a missing
 * database, a bad statement), a result or series marked "partial" (cut short by
 * the server's max-row-limit: read shorter ranges), or a time that is not an
 * integer (epoch=ms missing). Readings passed to fn before an error stay passed. */
int tly_influx_parse(const char *body, size_t len, const char *device_tag, tly_influx_reading_fn fn,
                     void *opaque, char *errbuf, size_t errlen);

/* ------------------------------------------------------------ resource map ---
 *
 * A resource map names the VIN of each (pod, device) when points carry a
 * device id rather than the VIN. The file is text, one mapping per line:
 *
 *   # pod      device     vin
 *   pod-a      dev-0017   WVWZZZ1JZXW000001
 *   pod-b      dev-0017   WVWZZZ1JZXW000002
 *
 * Three fields separated by spaces or tabs; blank lines and lines starting
 * with '#' are ignored. The same device id may appear in several pods (each
 * pod numbers its own devices). A (pod, device) listed twice is an error. */
typedef struct tly_influx_map tly_influx_map;

/* Loads a resource map. Returns 0 and *map, or -1 with errbuf naming the file
 * and line of the first problem. */
int tly_influx_map_load(const char *path, tly_influx_map **map, char *errbuf, size_t errlen);

void tly_influx_map_free(tly_influx_map *map);

/* The VIN of (pod, device), or NULL when the map does not list it. Borrowed
 * until tly_influx_map_free. */
const char *tly_influx_map_vin(const tly_influx_map *map, const char *pod, const char *device);

/* The distinct pods of the map in the order they first appear. */
size_t tly_influx_map_pod_count(const tly_influx_map *map);
const char *tly_influx_map_pod(const tly_influx_map *map, size_t i);

/* ------------------------------------------------------------------ retries ---
 *
 * The wait after failed attempt `attempt` (1 = the first): initial_ms doubled
 * for each attempt after the first, at most max_ms: 1 s, 2 s, 4 s, ... 30 s.
 * No jitter: a single poller per database has nobody to collide with, and a
 * predictable schedule is easier to read in the logs. */
int64_t tly_influx_backoff_ms(int attempt, int64_t initial_ms, int64_t max_ms);

#endif
