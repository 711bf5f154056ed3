/* adapters/influx/resource_map.h - resource maps: device ids to VINs.
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
 * pod numbers its own devices). A (pod, device) listed twice is an error.
 * A map is read-only once loaded. */
#ifndef TLY_RESOURCE_MAP_H
#define TLY_RESOURCE_MAP_H

#include <stddef.h>

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

#endif
