/* engine/duration.h - durations as the seeds write them: "500ms", "10s", "2m",
 * "24h", "1h30m", or a plain number of seconds ("60", "0.5"). */
#ifndef TLY_DURATION_H
#define TLY_DURATION_H

#include <stddef.h>
#include <stdint.h>

/* Parses text into milliseconds. Units: ms, s, m, h, d. Returns 0, or -1 with a
 * message in errbuf for an empty, negative, unknown-unit or overflowing value. */
int tly_duration_parse_ms(const char *text, int64_t *ms, char *errbuf, size_t errlen);

#endif
