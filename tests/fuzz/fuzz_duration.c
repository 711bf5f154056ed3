/* tests/fuzz/fuzz_duration.c - durations (engine/duration.c): any text is
 * parsed (it takes a NUL-terminated string: the input is copied into one of
 * exactly its size), and a duration accepted is not negative. */
#include "fuzz.h"

#include "duration.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256], *text = malloc(size + 1);
    int64_t ms = -1;

    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    if (tly_duration_parse_ms(text, &ms, err, sizeof(err)) == 0)
        FUZZ_ASSERT(ms >= 0, "%lld from <%s>", (long long)ms, text);
    else
        FUZZ_ASSERT(err[0] != '\0', "no reason given for <%s>", text);
    free(text);
    return 0;
}
