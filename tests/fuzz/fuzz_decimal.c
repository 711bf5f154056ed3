/* tests/fuzz/fuzz_decimal.c - exact decimals (engine/decimal.c): any bytes are
 * parsed at every scale the engine uses without reading past them, and a value
 * accepted formats back to text that parses to the same value. */
#include "fuzz.h"

#include "decimal.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const int scales[] = {0, 2, 6, 18};
    char err[256], text[32];

    for (size_t i = 0; i < sizeof(scales) / sizeof(scales[0]); i++) {
        int64_t value, again;
        int len;
        if (tly_decimal_parse((const char *)data, size, scales[i], &value, err, sizeof(err)) < 0)
            continue;
        len = tly_decimal_format(value, scales[i], text, sizeof(text));
        FUZZ_ASSERT(len > 0 && (size_t)len < sizeof(text), "format of %lld at scale %d",
                    (long long)value, scales[i]);
        FUZZ_ASSERT(tly_decimal_parse(text, (size_t)len, scales[i], &again, err, sizeof(err)) == 0,
                    "<%s> (from <%.*s>, scale %d) does not parse: %s", text, (int)size,
                    (const char *)data, scales[i], err);
        FUZZ_ASSERT(again == value, "<%.*s> scale %d: %lld, formatted <%s>, parsed back %lld",
                    (int)size, (const char *)data, scales[i], (long long)value, text,
                    (long long)again);
    }
    return 0;
}
