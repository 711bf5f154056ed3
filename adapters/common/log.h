/* adapters/common/log.h - one line per event on stderr, logfmt by default:
 *   ts=2026-11-21T05:11:42.123Z level=info event=flush vin_count=12 ...
 * or JSON (tly_log_set_format).
 * Thread-safe (one fprintf per line). */
#ifndef TLY_LOG_H
#define TLY_LOG_H

#include <stddef.h>

/* level: "debug", "info", "warn", "error". fmt is the rest of the line
 * ("key=value ..."); quote values with spaces using tly_log_quote. */
void tly_log(const char *level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Lines below `level` ("debug", "info", "warn", "error") are not written.
 * Returns 0, or -1 for an unknown level. Default "info". */
int tly_log_set_level(const char *level);

/* "logfmt" (default) or "json" (one object per line). Returns 0, or -1 for
 * an unknown format. */
int tly_log_set_format(const char *format);

/* A rate limit for one kind of line that can repeat without end (an accept
 * error, a library's warning): at most `per_second` lines a second, the rest
 * counted and not written. Zero-initialise; thread-safe. */
typedef struct tly_log_limit {
    long long second;     /* the current second (monotonic) */
    long long written;    /* lines let through in it */
    long long suppressed; /* lines held back since the last one let through */
} tly_log_limit;

/* Returns 1 when a line may be written now, with *suppressed set to how many
 * were held back before it (say so in the line); 0 when it must be dropped. */
int tly_log_limit_take(tly_log_limit *limit, int per_second, long long *suppressed);

/* Writes value as a quoted logfmt string into buf and returns buf. */
const char *tly_log_quote(const char *value, char *buf, size_t buflen);

#endif
