/* adapters/influx/latest.h - the latest reading of every sensor of every vehicle in
 * one ingest cycle, and the telemetry records that carry them.
 *
 * Readings come in any order (pods, chunks and out-of-order points); per
 * (VIN, sensor) the one with the newest time wins, and at equal times the one
 * added last. A record is the telemetry pipeline's input shape:
 *
 *   {"data":{"id":"<VIN>","<sensor>":<value>,...},"received_at":<ms>,"produced_at":<ms>}
 *
 * with the sensors in name order (byte order), values exactly as InfluxDB
 * wrote them (numbers keep their digits), received_at the newest time among
 * the VIN's readings, produced_at the time the record is made.
 * Not thread-safe. */
#ifndef TLY_LATEST_H
#define TLY_LATEST_H

#include <json-c/json.h>
#include <stddef.h>
#include <stdint.h>

typedef struct tly_latest tly_latest;

/* Returns an empty set, or NULL when out of memory. */
tly_latest *tly_latest_new(void);

/* Frees the set and the references it holds. NULL is a no-op. */
void tly_latest_free(tly_latest *latest);

/* Forgets every reading (for the next cycle). */
void tly_latest_clear(tly_latest *latest);

/* Adds one reading of sensor `sensor` of vehicle `vin` taken at time_ms.
 * Takes its own reference on value when it keeps it. A sensor named "id"
 * would overwrite the VIN in the record: it is ignored. Returns 1 when the
 * reading is now the sensor's latest (newer than the one held, or as new and
 * added later), 0 when a newer one is held (or the sensor is "id"), -1 when
 * out of memory. */
int tly_latest_add(tly_latest *latest, const char *vin, const char *sensor, int64_t time_ms,
                   json_object *value);

/* Vehicles held, in the order their first reading came. */
size_t tly_latest_count(const tly_latest *latest);

/* The VIN of vehicle i (borrowed until the next clear or free). */
const char *tly_latest_vin(const tly_latest *latest, size_t i);

/* The record of vehicle i with produced_at_ms. Returns a malloc'd
 * NUL-terminated JSON string and its length in *len, or NULL when out of
 * memory. */
char *tly_latest_record(tly_latest *latest, size_t i, int64_t produced_at_ms, size_t *len);

#endif
