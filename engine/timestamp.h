/* engine/timestamp.h - event times as epoch milliseconds, from the forms
 * producers send them in: epoch milliseconds, epoch seconds, RFC 3339.
 *
 * Thread-safe, no allocation. */
#ifndef TLY_TIMESTAMP_H
#define TLY_TIMESTAMP_H

#include <stddef.h>
#include <stdint.h>

/* 9999-12-31T23:59:59.999Z, the latest time accepted. */
#define TLY_TIMESTAMP_MAX_MS 253402300799999LL

/* An epoch number below this is seconds, at or above it milliseconds. 1e11
 * seconds is the year 5138 and 1e11 milliseconds is 1973-03-03, so no real
 * event time of either kind is ambiguous; an epoch-ms value before March 1973
 * is read as seconds. */
#define TLY_TIMESTAMP_SECONDS_BELOW 100000000000LL

/* Parses `len` bytes of `text` into epoch milliseconds (UTC):
 *
 *   epoch      digits[.digits]: seconds when below TLY_TIMESTAMP_SECONDS_BELOW,
 *              else milliseconds; a fraction beyond the millisecond is
 *              truncated ("1700000000.1239" -> 1700000000123)
 *   RFC 3339   YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM); "t", "z" and a
 *              space for "T" are accepted (RFC 3339 section 5.6 allows them);
 *              a fraction beyond the millisecond is truncated; second 60 (a
 *              leap second) counts as the next minute's :00
 *
 * The result must lie between 1970-01-01T00:00:00Z and TLY_TIMESTAMP_MAX_MS.
 * Returns 0, or -1 with the reason in errbuf: a sign, an exponent, a
 * calendar date that does not exist ("2024-02-30"), a missing offset, an
 * hour, minute or offset out of range, anything else. */
int tly_timestamp_parse(const char *text, size_t len, int64_t *ms, char *errbuf, size_t errlen);

#endif
