/* adapters/influx/influxql.h - the InfluxQL statement that reads vehicle
 * telemetry, and the answer it gets.
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
 * `*::field` keeps other tags out of the columns; GROUP BY puts the device
 * tag on each series. tly_influx_query (influx.h) sends it with epoch=ms, so
 * every time in the answer is an integer of milliseconds. */
#ifndef TLY_INFLUXQL_H
#define TLY_INFLUXQL_H

#include <json-c/json.h>
#include <stddef.h>
#include <stdint.h>

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

#endif
