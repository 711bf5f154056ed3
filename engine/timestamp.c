/* engine/timestamp.c - event times as epoch milliseconds.
 *
 * Everything is integer arithmetic on the digits as written: an RFC 3339
 * time never passes through the C library's time zone machinery (which reads
 * the TZ environment) and an epoch number never through floating point, so
 * "1700000000.123" is exactly 1700000000123 ms. Dates use the proleptic
 * Gregorian calendar (days_from_civil below, after Howard Hinnant's
 * "chrono-compatible low-level date algorithms"). */
#include "timestamp.h"
#include "error.h"

#include <stdbool.h>
#include <string.h>

/* Days since 1970-01-01 of a valid y-m-d. */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    int64_t era, yoe, doy, doe;
    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = y - era * 400;
    doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int days_in_month(int y, int m)
{
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 && leap ? 29 : days[m - 1];
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Reads exactly n digits at text[*pos]; -1 if they are not all there. */
static int fixed_digits(const char *text, size_t len, size_t *pos, int n)
{
    int v = 0;
    if (*pos + (size_t)n > len)
        return -1;
    for (int i = 0; i < n; i++) {
        char c = text[*pos + (size_t)i];
        if (!is_digit(c))
            return -1;
        v = v * 10 + (c - '0');
    }
    *pos += (size_t)n;
    return v;
}

/* The milliseconds of a fraction's digits (at least one), truncated. */
static int fraction_ms(const char *text, size_t len, size_t *pos)
{
    int ms = 0, n = 0;
    while (*pos < len && is_digit(text[*pos])) {
        if (n < 3)
            ms = ms * 10 + (text[*pos] - '0');
        n++;
        (*pos)++;
    }
    if (n == 0)
        return -1;
    for (; n < 3; n++)
        ms *= 10;
    return ms;
}

static int parse_epoch(const char *text, size_t len, int64_t *ms, char *errbuf, size_t errlen)
{
    int64_t whole = 0;
    size_t pos = 0;
    int digits = 0, frac = 0;

    if (text[0] == '-')
        return tly_error(errbuf, errlen, "negative epoch time %.*s", (int)(len > 40 ? 40 : len),
                         text);
    while (pos < len && is_digit(text[pos])) {
        /* 16 digits bound every value below: more is out of range anyway */
        if (++digits > 16)
            return tly_error(errbuf, errlen, "epoch time is out of range (after the year 9999)");
        whole = whole * 10 + (text[pos++] - '0');
    }
    if (digits == 0)
        goto bad;
    if (pos < len && text[pos] == '.') {
        pos++;
        if ((frac = fraction_ms(text, len, &pos)) < 0)
            goto bad;
    }
    if (pos < len && (text[pos] == 'e' || text[pos] == 'E'))
        return tly_error(errbuf, errlen, "epoch time with an exponent (%.*s): write the digits",
                         (int)(len > 40 ? 40 : len), text);
    if (pos != len)
        goto bad;
    if (whole < TLY_TIMESTAMP_SECONDS_BELOW)
        *ms = whole * 1000 + frac;
    else
        *ms = whole; /* a fraction of a millisecond is dropped */
    if (*ms > TLY_TIMESTAMP_MAX_MS)
        return tly_error(errbuf, errlen, "epoch time is out of range (after the year 9999)");
    return 0;
bad:
    return tly_error(errbuf, errlen,
                     "\"%.*s\" is not a time: epoch ms, epoch seconds or RFC 3339 "
                     "(2024-05-01T12:00:00Z)",
                     (int)(len > 40 ? 40 : len), text);
}

static int parse_rfc3339(const char *text, size_t len, int64_t *ms, char *errbuf, size_t errlen)
{
    size_t pos = 0;
    int year, month, day, hour, minute, second, millis = 0, offset_minutes = 0;
    int64_t days, total;
    char sep;

    if ((year = fixed_digits(text, len, &pos, 4)) < 0 || pos >= len || text[pos++] != '-' ||
        (month = fixed_digits(text, len, &pos, 2)) < 0 || pos >= len || text[pos++] != '-' ||
        (day = fixed_digits(text, len, &pos, 2)) < 0)
        goto bad;
    if (pos >= len)
        return tly_error(errbuf, errlen,
                         "\"%.*s\" has a date but no time: RFC 3339 needs "
                         "YYYY-MM-DDTHH:MM:SS and an offset (Z or +HH:MM)",
                         (int)(len > 40 ? 40 : len), text);
    sep = text[pos++];
    if ((sep != 'T' && sep != 't' && sep != ' ') || (hour = fixed_digits(text, len, &pos, 2)) < 0 ||
        pos >= len || text[pos++] != ':' || (minute = fixed_digits(text, len, &pos, 2)) < 0 ||
        pos >= len || text[pos++] != ':' || (second = fixed_digits(text, len, &pos, 2)) < 0)
        goto bad;
    if (pos < len && text[pos] == '.') {
        pos++;
        if ((millis = fraction_ms(text, len, &pos)) < 0)
            goto bad;
    }
    if (pos >= len)
        return tly_error(errbuf, errlen, "\"%.*s\" has no offset: add Z (UTC) or +HH:MM",
                         (int)(len > 40 ? 40 : len), text);
    if (text[pos] == 'Z' || text[pos] == 'z') {
        pos++;
    } else if (text[pos] == '+' || text[pos] == '-') {
        int sign = text[pos++] == '-' ? -1 : 1, oh, om;
        if ((oh = fixed_digits(text, len, &pos, 2)) < 0 || pos >= len || text[pos++] != ':' ||
            (om = fixed_digits(text, len, &pos, 2)) < 0)
            goto bad;
        if (oh > 23 || om > 59)
            return tly_error(errbuf, errlen, "\"%.*s\": offset out of range (-23:59 to +23:59)",
                             (int)(len > 40 ? 40 : len), text);
        offset_minutes = sign * (oh * 60 + om);
    } else {
        goto bad;
    }
    if (pos != len)
        goto bad;
    if (month < 1 || month > 12 || day < 1 || day > days_in_month(year, month))
        return tly_error(errbuf, errlen, "\"%.*s\": no such date", (int)(len > 40 ? 40 : len),
                         text);
    if (hour > 23 || minute > 59 || second > 60)
        return tly_error(errbuf, errlen, "\"%.*s\": no such time of day",
                         (int)(len > 40 ? 40 : len), text);
    days = days_from_civil(year, month, day);
    total = ((days * 24 + hour) * 60 + minute - offset_minutes) * 60 + second;
    total = total * 1000 + millis;
    if (total < 0 || total > TLY_TIMESTAMP_MAX_MS)
        return tly_error(errbuf, errlen, "\"%.*s\" is before 1970 or after the year 9999",
                         (int)(len > 40 ? 40 : len), text);
    *ms = total;
    return 0;
bad:
    return tly_error(errbuf, errlen,
                     "\"%.*s\" is not a time: epoch ms, epoch seconds or RFC 3339 "
                     "(2024-05-01T12:00:00Z)",
                     (int)(len > 40 ? 40 : len), text);
}

int tly_timestamp_parse(const char *text, size_t len, int64_t *ms, char *errbuf, size_t errlen)
{
    if (len == 0)
        return tly_error(errbuf, errlen, "empty time");
    /* "YYYY-" starts a date; an epoch number never has a '-' after 4 digits */
    if (len > 4 && text[4] == '-' && is_digit(text[0]))
        return parse_rfc3339(text, len, ms, errbuf, errlen);
    return parse_epoch(text, len, ms, errbuf, errlen);
}
