/* engine/decimal.h - exact decimal numbers as scaled 64-bit integers.
 *
 * Money never passes through binary floating point in tally: "83.71" with scale 6
 * becomes 83710000, and 83710000 * 3 formats back as "251.13". Thread-safe, no
 * allocation. */
#ifndef TLY_DECIMAL_H
#define TLY_DECIMAL_H

#include <stddef.h>
#include <stdint.h>

/* Parses `len` bytes of `text`, a decimal in JSON number syntax optionally
 * surrounded by nothing else: [-]digits[.digits][(e|E)[+-]digits]. Stores
 * value * 10^scale in *out. Returns 0, or -1 with a message in errbuf when the
 * text is not a number, has more than `scale` significant decimal places (it is
 * never rounded), or does not fit in int64. 0 <= scale <= 18. */
int tly_decimal_parse(const char *text, size_t len, int scale, int64_t *out, char *errbuf,
                      size_t errlen);

/* Formats value / 10^scale with at least two decimals and no trailing zeros
 * beyond them ("251.13", "10.50", "-0.000007"). Returns the length written, or -1
 * if buflen is too small (32 bytes always suffice). */
int tly_decimal_format(int64_t value, int scale, char *buf, size_t buflen);

#endif
