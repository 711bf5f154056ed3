/* tests/fuzz/fuzz_changelog_replay.c - the changelog replay line parser
 * (engine/changelog.c), through its public API: each line of the input is
 * an export line replayed into a fresh in-memory database that knows the
 * built-in pipelines and the example pipeline files. Any line is applied or
 * refused with a reason; nothing may crash or leak. */
#include "fuzz.h"

#include "changelog.h"
#include "store.h"

#include <stdbool.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const files[] = {TALLY_SOURCE_DIR "/examples/pipelines/pageviews.sql",
                                        TALLY_SOURCE_DIR "/examples/pipelines/sensor_max.sql",
                                        NULL};
    /* Opening a replayer (migrations, five pipelines) costs more than most
     * inputs: it is kept while inputs only hold refused lines, which change
     * nothing, and opened afresh after an input that applied a line (its
     * next seq moved), so every input meets a replayer as opened. */
    static tly_replayer *r;
    const char *line = (const char *)data, *end = line + size;
    bool accepted = false;
    char err[1024];

    if (size > 65536)
        return 0;
    if (!r)
        FUZZ_ASSERT(tly_replayer_open(":memory:", files, &r, err, sizeof(err)) == 0, "%s", err);
    FUZZ_ASSERT(tly_store_begin(tly_replayer_store(r), err, sizeof(err)) == 0, "%s", err);
    while (line < end) {
        const char *nl = memchr(line, '\n', (size_t)(end - line));
        size_t len = nl ? (size_t)(nl - line) : (size_t)(end - line);
        /* A copy of exactly the line, as the daemon hands over a Kafka
         * payload: reading one byte past it is an overflow ASan reports. */
        char *copy = malloc(len ? len : 1);
        tly_replay_outcome out;
        FUZZ_ASSERT(copy, "out of memory");
        memcpy(copy, line, len);
        err[0] = '\0';
        if (tly_replayer_apply_line(r, copy, len, &out, err, sizeof(err)) < 0)
            FUZZ_ASSERT(err[0], "a line refused without a reason");
        else
            accepted = true;
        free(copy);
        line += len + (nl ? 1 : 0);
    }
    tly_store_rollback(tly_replayer_store(r));
    if (accepted) {
        tly_replayer_close(r);
        r = NULL;
    }
    return 0;
}
