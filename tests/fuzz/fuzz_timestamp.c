/* tests/fuzz/fuzz_timestamp.c - event times (engine/timestamp.c): any bytes
 * are parsed without reading past them, and a time accepted lies in the
 * documented range. */
#include "fuzz.h"

#include "timestamp.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    int64_t ms = -1;

    if (tly_timestamp_parse((const char *)data, size, &ms, err, sizeof(err)) == 0)
        FUZZ_ASSERT(ms >= 0 && ms <= TLY_TIMESTAMP_MAX_MS, "%lld from <%.*s>", (long long)ms,
                    (int)size, (const char *)data);
    else
        FUZZ_ASSERT(err[0] != '\0' && memchr(err, '\0', sizeof(err)), "no reason given");
    return 0;
}
