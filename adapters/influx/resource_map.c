/* adapters/influx/resource_map.c - the file that names the VIN of each (pod,
 * device); its format is described in resource_map.h. */
#include "resource_map.h"

#include "error.h"

#include <inttypes.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The pairs live in a json-c object used as a hash table: key
 * "<pod>\x1f<device>" (the unit separator, which no field may contain),
 * value the VIN. */
struct tly_influx_map {
    json_object *vins;
    char **pods;
    size_t pod_count, pod_capacity;
};

static int has_control(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return 1;
    return 0;
}

static int add_pod(tly_influx_map *map, const char *pod)
{
    for (size_t i = 0; i < map->pod_count; i++)
        if (strcmp(map->pods[i], pod) == 0)
            return 0;
    if (map->pod_count == map->pod_capacity) {
        size_t cap = map->pod_capacity ? map->pod_capacity * 2 : 8;
        char **grown = realloc(map->pods, cap * sizeof(*grown));
        if (!grown)
            return -1;
        map->pods = grown;
        map->pod_capacity = cap;
    }
    if (!(map->pods[map->pod_count] = strdup(pod)))
        return -1;
    map->pod_count++;
    return 0;
}

int tly_influx_map_load(const char *path, tly_influx_map **out, char *errbuf, size_t errlen)
{
    tly_influx_map *map = calloc(1, sizeof(*map));
    FILE *f = NULL;
    char *line = NULL, *fields[4], *save, key[1024];
    size_t cap = 0, nfields;
    int64_t line_no = 0, pairs = 0;
    ssize_t len;
    int rc = -1;

    *out = NULL;
    if (!map || !(map->vins = json_object_new_object())) {
        tly_error(errbuf, errlen, "out of memory");
        goto done;
    }
    if (!(f = fopen(path, "r"))) {
        tly_error(errbuf, errlen, "cannot open resource map %s: %m", path);
        goto done;
    }
    while ((len = getline(&line, &cap, f)) >= 0) {
        json_object *existing;
        line_no++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        nfields = 0;
        for (char *tok = strtok_r(line, " \t", &save); tok; tok = strtok_r(NULL, " \t", &save)) {
            if (nfields == 0 && tok[0] == '#')
                break;
            if (nfields < 4)
                fields[nfields] = tok;
            nfields++;
        }
        if (nfields == 0)
            continue;
        if (nfields != 3) {
            tly_error(errbuf, errlen,
                      "%s:%" PRId64 ": expected \"POD DEVICE VIN\", got %zu field(s)", path,
                      line_no, nfields);
            goto done;
        }
        if (has_control(fields[0]) || has_control(fields[1]) || has_control(fields[2])) {
            tly_error(errbuf, errlen, "%s:%" PRId64 ": control characters in a field", path,
                      line_no);
            goto done;
        }
        if ((size_t)snprintf(key, sizeof(key), "%s\x1f%s", fields[0], fields[1]) >= sizeof(key)) {
            tly_error(errbuf, errlen, "%s:%" PRId64 ": pod and device are too long", path, line_no);
            goto done;
        }
        if (json_object_object_get_ex(map->vins, key, &existing)) {
            tly_error(errbuf, errlen,
                      "%s:%" PRId64 ": pod %s device %s is listed twice (VIN %s and %s)", path,
                      line_no, fields[0], fields[1], json_object_get_string(existing), fields[2]);
            goto done;
        }
        if (json_object_object_add(map->vins, key, json_object_new_string(fields[2])) < 0 ||
            add_pod(map, fields[0]) < 0) {
            tly_error(errbuf, errlen, "out of memory");
            goto done;
        }
        pairs++;
    }
    if (ferror(f)) {
        tly_error(errbuf, errlen, "cannot read resource map %s: %m", path);
        goto done;
    }
    if (pairs == 0) {
        tly_error(errbuf, errlen, "resource map %s lists no device", path);
        goto done;
    }
    *out = map;
    map = NULL;
    rc = 0;
done:
    free(line);
    if (f)
        fclose(f);
    tly_influx_map_free(map);
    return rc;
}

void tly_influx_map_free(tly_influx_map *map)
{
    if (!map)
        return;
    json_object_put(map->vins);
    for (size_t i = 0; i < map->pod_count; i++)
        free(map->pods[i]);
    free(map->pods);
    free(map);
}

const char *tly_influx_map_vin(const tly_influx_map *map, const char *pod, const char *device)
{
    char key[1024];
    json_object *vin;
    if ((size_t)snprintf(key, sizeof(key), "%s\x1f%s", pod, device) >= sizeof(key))
        return NULL;
    return json_object_object_get_ex(map->vins, key, &vin) ? json_object_get_string(vin) : NULL;
}

size_t tly_influx_map_pod_count(const tly_influx_map *map)
{
    return map->pod_count;
}

const char *tly_influx_map_pod(const tly_influx_map *map, size_t i)
{
    return i < map->pod_count ? map->pods[i] : NULL;
}
