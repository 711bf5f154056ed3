/* engine/decimal.c - exact decimal numbers as scaled 64-bit integers.
 *
 * The parser works on the digits as text, never through strtod, so "0.1" is
 * exactly 100000 at scale 6 and "1e-7" at scale 6 is an error, not 0. */
#include "decimal.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

static int fail(char *errbuf, size_t errlen, const char *msg, const char *text, size_t len)
{
    if (errbuf && errlen)
        snprintf(errbuf, errlen, "%s: \"%.*s\"", msg, (int)(len > 40 ? 40 : len), text);
    return -1;
}

int tly_decimal_parse(const char *text, size_t len, int scale, int64_t *out, char *errbuf,
                      size_t errlen)
{
    const char *p = text, *end = text + len;
    bool negative = false;
    /* Digits of the mantissa with the decimal point removed; `point` is how many
     * of them are after the point. */
    const char *int_start, *int_end, *frac_start = NULL, *frac_end = NULL;
    long exponent = 0;

    if (scale < 0 || scale > 18)
        return fail(errbuf, errlen, "unsupported decimal scale", text, len);
    if (p < end && *p == '-') {
        negative = true;
        p++;
    }
    int_start = p;
    while (p < end && *p >= '0' && *p <= '9')
        p++;
    int_end = p;
    if (int_end == int_start)
        return fail(errbuf, errlen, "not a decimal number", text, len);
    if (p < end && *p == '.') {
        frac_start = ++p;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
        frac_end = p;
        if (frac_end == frac_start)
            return fail(errbuf, errlen, "not a decimal number", text, len);
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        bool exp_negative = false;
        const char *exp_start;
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            exp_negative = *p++ == '-';
        exp_start = p;
        while (p < end && *p >= '0' && *p <= '9') {
            if (exponent < 100000)
                exponent = exponent * 10 + (*p - '0');
            p++;
        }
        if (p == exp_start)
            return fail(errbuf, errlen, "not a decimal number", text, len);
        if (exp_negative)
            exponent = -exponent;
    }
    if (p != end)
        return fail(errbuf, errlen, "not a decimal number", text, len);

    /* value = mantissa_digits * 10^(exponent - frac_digits + scale) */
    long frac_digits = frac_start ? (long)(frac_end - frac_start) : 0;
    long shift = exponent - frac_digits + scale;
    uint64_t magnitude = 0;
    const uint64_t limit = negative ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    bool nonzero_dropped = false;
    long digits_total = (long)(int_end - int_start) + frac_digits;
    long keep = digits_total + (shift < 0 ? shift : 0); /* digits that stay integral */

    for (long i = 0; i < digits_total; i++) {
        char c = i < (int_end - int_start) ? int_start[i] : frac_start[i - (int_end - int_start)];
        unsigned d = (unsigned)(c - '0');
        if (i >= keep) {
            if (d != 0)
                nonzero_dropped = true;
            continue;
        }
        if (magnitude > (limit - d) / 10)
            return fail(errbuf, errlen, "number too large", text, len);
        magnitude = magnitude * 10 + d;
    }
    if (nonzero_dropped) {
        char msg[64];
        snprintf(msg, sizeof(msg), "more than %d decimal places", scale);
        return fail(errbuf, errlen, msg, text, len);
    }
    for (long i = 0; i < shift; i++) {
        if (magnitude == 0)
            break;
        if (magnitude > limit / 10)
            return fail(errbuf, errlen, "number too large", text, len);
        magnitude *= 10;
    }
    if (negative)
        *out = magnitude == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)magnitude;
    else
        *out = (int64_t)magnitude;
    return 0;
}

int tly_decimal_format(int64_t value, int scale, char *buf, size_t buflen)
{
    uint64_t magnitude = value < 0 ? (uint64_t)0 - (uint64_t)value : (uint64_t)value;
    uint64_t divisor = 1;
    char frac[24];
    int n, frac_len;

    if (scale < 0 || scale > 18)
        return -1;
    for (int i = 0; i < scale; i++)
        divisor *= 10;
    snprintf(frac, sizeof(frac), "%0*llu", scale, (unsigned long long)(magnitude % divisor));
    frac_len = scale;
    while (frac_len > 2 && frac[frac_len - 1] == '0')
        frac_len--;
    if (scale < 2) {
        /* pad to two decimals */
        frac[scale] = '0';
        frac[scale == 0 ? 1 : 2] = '0';
        frac_len = 2;
    }
    n = snprintf(buf, buflen, "%s%llu.%.*s", value < 0 ? "-" : "",
                 (unsigned long long)(magnitude / divisor), frac_len, frac);
    if (n < 0 || (size_t)n >= buflen)
        return -1;
    return n;
}
