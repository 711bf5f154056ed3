/* engine/duration.c - parse "500ms", "10s", "2m", "24h", "1h30m", "60". */
#include "duration.h"

#include <stdio.h>
#include <string.h>

int tly_duration_parse_ms(const char *text, int64_t *ms, char *errbuf, size_t errlen)
{
    const char *p = text;
    int64_t total = 0;
    int parts = 0;

    if (!text || !*text)
        goto bad;
    while (*p) {
        int64_t whole = 0, frac_num = 0, frac_den = 1, unit_ms;
        const char *start = p;

        while (*p >= '0' && *p <= '9') {
            if (whole > INT64_MAX / 100000000)
                goto bad;
            whole = whole * 10 + (*p++ - '0');
        }
        if (*p == '.') {
            p++;
            while (*p >= '0' && *p <= '9') {
                if (frac_den < 1000000000) {
                    frac_num = frac_num * 10 + (*p - '0');
                    frac_den *= 10;
                }
                p++;
            }
        }
        if (p == start)
            goto bad;
        if (strncmp(p, "ms", 2) == 0) {
            unit_ms = 1;
            p += 2;
        } else if (*p == 's') {
            unit_ms = 1000;
            p++;
        } else if (*p == 'm') {
            unit_ms = 60000;
            p++;
        } else if (*p == 'h') {
            unit_ms = 3600000;
            p++;
        } else if (*p == 'd') {
            unit_ms = 86400000;
            p++;
        } else if (*p == '\0' && parts == 0) {
            unit_ms = 1000; /* a plain number is seconds */
        } else {
            goto bad;
        }
        if (whole > (INT64_MAX - total) / unit_ms / 2)
            goto bad;
        total += whole * unit_ms + frac_num * unit_ms / frac_den;
        parts++;
    }
    *ms = total;
    return 0;
bad:
    if (errbuf && errlen)
        snprintf(errbuf, errlen,
                 "invalid duration \"%s\": use seconds (\"60\") or a number with a unit "
                 "(\"500ms\", \"10s\", \"2m\", \"24h\", \"1h30m\")",
                 text ? text : "");
    return -1;
}
