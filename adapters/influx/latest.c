/* adapters/influx/latest.c - the latest reading per (VIN, sensor) of one cycle.
 *
 * Vehicles are kept in an array in first-seen order, found by VIN through a
 * json-c hash table (linkhash) whose values are array positions + 1. A
 * vehicle's sensors are a small array searched linearly: vehicles report a
 * handful to a few dozen sensors, where a scan beats hashing. */
#include "latest.h"

#include <json-c/linkhash.h>
#include <stdlib.h>
#include <string.h>

#define INDEX_INITIAL_SIZE 1024

struct sensor {
    char *name;
    int64_t time_ms;
    json_object *value; /* a reference we own */
};

struct vehicle {
    char *vin;
    int64_t received_at_ms;
    struct sensor *sensors;
    size_t count, capacity;
};

struct tly_latest {
    struct vehicle *vehicles;
    size_t count, capacity;
    struct lh_table *index; /* vin (borrowed from vehicles[i].vin) -> i + 1 */
};

tly_latest *tly_latest_new(void)
{
    tly_latest *latest = calloc(1, sizeof(*latest));
    if (!latest)
        return NULL;
    if (!(latest->index = lh_kchar_table_new(INDEX_INITIAL_SIZE, NULL))) {
        free(latest);
        return NULL;
    }
    return latest;
}

static void free_vehicles(tly_latest *latest)
{
    for (size_t i = 0; i < latest->count; i++) {
        struct vehicle *v = &latest->vehicles[i];
        for (size_t s = 0; s < v->count; s++) {
            free(v->sensors[s].name);
            json_object_put(v->sensors[s].value);
        }
        free(v->sensors);
        free(v->vin);
    }
    latest->count = 0;
}

void tly_latest_free(tly_latest *latest)
{
    if (!latest)
        return;
    free_vehicles(latest);
    free(latest->vehicles);
    if (latest->index)
        lh_table_free(latest->index);
    free(latest);
}

void tly_latest_clear(tly_latest *latest)
{
    struct lh_table *fresh;
    free_vehicles(latest);
    /* A new table rather than deleting entry by entry: its size is not kept
     * from a large cycle, and clearing is one call. If it cannot be made, the
     * old one is emptied instead. */
    if ((fresh = lh_kchar_table_new(INDEX_INITIAL_SIZE, NULL))) {
        lh_table_free(latest->index);
        latest->index = fresh;
    } else {
        struct lh_entry *e, *next;
        for (e = latest->index->head; e; e = next) {
            next = e->next;
            lh_table_delete_entry(latest->index, e);
        }
    }
}

static struct vehicle *find_or_add_vehicle(tly_latest *latest, const char *vin)
{
    void *found;
    struct vehicle *v;

    if (lh_table_lookup_ex(latest->index, vin, &found))
        return &latest->vehicles[(uintptr_t)found - 1];
    if (latest->count == latest->capacity) {
        size_t cap = latest->capacity ? latest->capacity * 2 : 64;
        struct vehicle *grown = realloc(latest->vehicles, cap * sizeof(*grown));
        if (!grown)
            return NULL;
        latest->vehicles = grown;
        latest->capacity = cap;
    }
    v = &latest->vehicles[latest->count];
    memset(v, 0, sizeof(*v));
    v->received_at_ms = INT64_MIN;
    if (!(v->vin = strdup(vin)))
        return NULL;
    if (lh_table_insert(latest->index, v->vin, (void *)(uintptr_t)(latest->count + 1)) != 0) {
        free(v->vin);
        return NULL;
    }
    latest->count++;
    return v;
}

int tly_latest_add(tly_latest *latest, const char *vin, const char *sensor, int64_t time_ms,
                   json_object *value)
{
    struct vehicle *v;
    struct sensor *s = NULL;

    if (strcmp(sensor, "id") == 0)
        return 0;
    if (!(v = find_or_add_vehicle(latest, vin)))
        return -1;
    for (size_t i = 0; i < v->count; i++)
        if (strcmp(v->sensors[i].name, sensor) == 0) {
            s = &v->sensors[i];
            break;
        }
    if (s && s->time_ms > time_ms)
        return 0;
    if (!s) {
        if (v->count == v->capacity) {
            size_t cap = v->capacity ? v->capacity * 2 : 8;
            struct sensor *grown = realloc(v->sensors, cap * sizeof(*grown));
            if (!grown)
                return -1;
            v->sensors = grown;
            v->capacity = cap;
        }
        s = &v->sensors[v->count];
        if (!(s->name = strdup(sensor)))
            return -1;
        s->value = NULL;
        v->count++;
    }
    /* get before put: value may be the very object already held. */
    json_object_get(value);
    json_object_put(s->value);
    s->value = value;
    s->time_ms = time_ms;
    if (time_ms > v->received_at_ms)
        v->received_at_ms = time_ms;
    return 1;
}

size_t tly_latest_count(const tly_latest *latest)
{
    return latest->count;
}

const char *tly_latest_vin(const tly_latest *latest, size_t i)
{
    return i < latest->count ? latest->vehicles[i].vin : NULL;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(((const struct sensor *)a)->name, ((const struct sensor *)b)->name);
}

char *tly_latest_record(tly_latest *latest, size_t i, int64_t produced_at_ms, size_t *len)
{
    struct vehicle *v;
    json_object *root = NULL, *data = NULL;
    const char *text;
    char *out = NULL;
    size_t n;

    if (i >= latest->count)
        return NULL;
    v = &latest->vehicles[i];
    qsort(v->sensors, v->count, sizeof(*v->sensors), by_name);
    /* json-c keeps an object's keys in insertion order: id first, then the
     * sensors sorted, then the times, as the telemetry input shape reads. */
    if (!(root = json_object_new_object()) || !(data = json_object_new_object()))
        goto done;
    if (json_object_object_add(root, "data", data) < 0) {
        json_object_put(data);
        goto done;
    }
    if (json_object_object_add(data, "id", json_object_new_string(v->vin)) < 0)
        goto done;
    for (size_t s = 0; s < v->count; s++)
        if (json_object_object_add(data, v->sensors[s].name, json_object_get(v->sensors[s].value)) <
            0)
            goto done;
    if (json_object_object_add(root, "received_at", json_object_new_int64(v->received_at_ms)) < 0 ||
        json_object_object_add(root, "produced_at", json_object_new_int64(produced_at_ms)) < 0)
        goto done;
    if (!(text = json_object_to_json_string_length(
              root, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &n)))
        goto done;
    if ((out = malloc(n + 1))) {
        memcpy(out, text, n + 1);
        *len = n;
    }
done:
    json_object_put(root);
    return out;
}
