/* adapters/common/loadgen.c - synthetic orders and telemetry.
 *
 * Orders look like the enriched stream: string ids, prices with cents as JSON
 * numbers or (one in four) decimal strings, qty 1..5, ts and normTs in epoch ms.
 * Telemetry looks like the aggregated sensor stream: {"data":{"id":VIN, ...},
 * "received_at", "produced_at"} with numeric, boolean and string sensors. */
#include "loadgen.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tly_loadgen {
    tly_loadgen_options opts;
    int orders; /* 1 = orders, 0 = telemetry */
    uint64_t state;
    uint64_t sequence;
    int last_readings;
};

static uint64_t next_random(tly_loadgen *g)
{
    /* xorshift64* */
    g->state ^= g->state >> 12;
    g->state ^= g->state << 25;
    g->state ^= g->state >> 27;
    return g->state * 2685821657736338717ULL;
}

static unsigned pick(tly_loadgen *g, unsigned n)
{
    if (g->opts.skewed && n >= 5 && next_random(g) % 10 < 8)
        return (unsigned)(next_random(g) % (n / 5));
    return (unsigned)(next_random(g) % n);
}

void tly_loadgen_options_init(tly_loadgen_options *opts, const char *pipeline)
{
    memset(opts, 0, sizeof(*opts));
    opts->pipeline = pipeline;
    opts->seed = 0x9E3779B97F4A7C15ULL;
    opts->stores = 50;
    opts->products = 200;
    opts->vins = 1000;
    opts->sensors = 30;
    opts->sensors_per_event = 5;
}

tly_loadgen *tly_loadgen_new(const tly_loadgen_options *opts)
{
    tly_loadgen *g;
    if (!opts->pipeline ||
        (strcmp(opts->pipeline, "orders") && strcmp(opts->pipeline, "telemetry")))
        return NULL;
    if (opts->stores < 1 || opts->products < 1 || opts->vins < 1 || opts->sensors < 1 ||
        opts->sensors > 60 || opts->sensors_per_event < 1)
        return NULL;
    g = calloc(1, sizeof(*g));
    if (!g)
        return NULL;
    g->opts = *opts;
    if (g->opts.sensors_per_event > g->opts.sensors)
        g->opts.sensors_per_event = g->opts.sensors;
    g->orders = strcmp(opts->pipeline, "orders") == 0;
    g->state = opts->seed ? opts->seed : 1;
    return g;
}

void tly_loadgen_free(tly_loadgen *g)
{
    free(g);
}

int tly_loadgen_last_readings(const tly_loadgen *g)
{
    return g->last_readings;
}

static const char *const sensor_names[] = {
    "speed",        "rpm",        "fuel_level", "battery_voltage", "odometer",   "engine_temp",
    "oil_pressure", "tire_fl",    "tire_fr",    "tire_rl",         "tire_rr",    "lat",
    "lon",          "heading",    "altitude",   "door_open",       "ignition",   "gear",
    "throttle",     "brake",      "coolant",    "ambient_temp",    "cabin_temp", "ac_on",
    "wiper",        "headlights", "seatbelt",   "driver_id",       "firmware",   "signal"};

static int write_sensor(tly_loadgen *g, int sensor, char *p, size_t room)
{
    char name[32];
    unsigned r = (unsigned)(next_random(g) % 100000);
    if (sensor < 30)
        snprintf(name, sizeof(name), "%s", sensor_names[sensor]);
    else
        snprintf(name, sizeof(name), "sensor_%02d", sensor);
    switch (sensor % 10) {
    case 5: /* booleans */ return snprintf(p, room, ",\"%s\":%s", name, r % 2 ? "true" : "false");
    case 8: /* strings */ return snprintf(p, room, ",\"%s\":\"v%u.%u\"", name, r % 7, r % 3);
    case 0: /* integers */ return snprintf(p, room, ",\"%s\":%u", name, r);
    default: /* decimals */ return snprintf(p, room, ",\"%s\":%u.%02u", name, r / 100, r % 100);
    }
}

int tly_loadgen_next(tly_loadgen *g, int64_t now_ms, char *buf, size_t buflen)
{
    int64_t ts = now_ms - (g->opts.time_spread_ms > 0
                               ? (int64_t)(next_random(g) % (uint64_t)g->opts.time_spread_ms)
                               : 0);
    int n;

    g->sequence++;
    if (g->orders) {
        unsigned store = pick(g, (unsigned)g->opts.stores);
        unsigned product = pick(g, (unsigned)g->opts.products);
        unsigned cents = (unsigned)(next_random(g) % 20000) + 100;
        unsigned qty = (unsigned)(next_random(g) % 5) + 1;
        if (next_random(g) % 4 == 0)
            n = snprintf(buf, buflen,
                         "{\"orderId\":\"o-%llu\",\"productId\":\"p-%u\",\"price\":\"%u.%02u\","
                         "\"qty\":%u,\"storeId\":\"s-%u\",\"ts\":%lld,\"validated\":true,"
                         "\"normTs\":%lld}",
                         (unsigned long long)g->sequence, product, cents / 100, cents % 100, qty,
                         store, (long long)ts, (long long)ts);
        else
            n = snprintf(buf, buflen,
                         "{\"orderId\":\"o-%llu\",\"productId\":\"p-%u\",\"price\":%u.%02u,"
                         "\"qty\":%u,\"storeId\":\"s-%u\",\"ts\":%lld,\"validated\":true,"
                         "\"normTs\":%lld}",
                         (unsigned long long)g->sequence, product, cents / 100, cents % 100, qty,
                         store, (long long)ts, (long long)ts);
        g->last_readings = 1;
    } else {
        unsigned vin = pick(g, (unsigned)g->opts.vins);
        int count = g->opts.sensors_per_event;
        int first =
            count == g->opts.sensors ? 0 : (int)(next_random(g) % (unsigned)g->opts.sensors);
        n = snprintf(buf, buflen, "{\"data\":{\"id\":\"VIN%08u\"", vin);
        for (int s = 0; s < count && n > 0 && (size_t)n < buflen; s++)
            n += write_sensor(g, (first + s) % g->opts.sensors, buf + n, buflen - (size_t)n);
        if (n > 0 && (size_t)n < buflen)
            n += snprintf(buf + n, buflen - (size_t)n,
                          "},\"received_at\":%lld,\"produced_at\":%lld}", (long long)ts,
                          (long long)ts - (int64_t)(next_random(g) % 50));
        g->last_readings = count;
    }
    return n > 0 && (size_t)n < buflen ? n : -1;
}
