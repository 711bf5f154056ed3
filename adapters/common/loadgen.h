/* adapters/common/loadgen.h - realistic synthetic events for the demo, the load
 * generator and the benchmarks.
 *
 * Deterministic for a given seed, no allocation per event. Not thread-safe:
 * one generator per thread. */
#ifndef TLY_LOADGEN_H
#define TLY_LOADGEN_H

#include <stddef.h>
#include <stdint.h>

typedef struct tly_loadgen tly_loadgen;

typedef struct tly_loadgen_options {
    const char *pipeline;   /* "orders" or "telemetry" */
    uint64_t seed;          /* same seed, same events */
    int stores, products;   /* orders: keys are stores x products (default 50 x 200) */
    int vins, sensors;      /* telemetry: vehicles and sensors each (default 1000 x 30) */
    int sensors_per_event;  /* telemetry: readings per event (default 5; sensors = full record) */
    int64_t time_spread_ms; /* event time = now - uniform[0, spread) (default 0) */
    int skewed;             /* 1 = keys follow a hot/cold split (20% of keys, 80% of events) */
} tly_loadgen_options;

/* Fills opts with the defaults above for `pipeline`. */
void tly_loadgen_options_init(tly_loadgen_options *opts, const char *pipeline);

/* Returns a generator, or NULL for an unknown pipeline or out of memory. */
tly_loadgen *tly_loadgen_new(const tly_loadgen_options *opts);
void tly_loadgen_free(tly_loadgen *gen);

/* Writes the next event (one JSON object, no newline) with event time around
 * now_ms into buf. Returns its length, or -1 if buflen is too small (4096
 * always suffices for up to 60 sensors per event). */
int tly_loadgen_next(tly_loadgen *gen, int64_t now_ms, char *buf, size_t buflen);

/* Readings (sensor values, or 1 per order) in the last event. */
int tly_loadgen_last_readings(const tly_loadgen *gen);

#endif
