/* tests/fuzz/fuzz_pipeline_file.c - the pipeline file parser (engine/pipeline.c's
 * directives and sections, engine/derive.c's @state and @fold checks). Any
 * text is read by tally describe's path (no database) and opened on a fresh
 * in-memory database; a file that opens takes two events. Nothing may crash
 * or leak (LeakSanitizer runs at the end), and a refused file says why.
 *
 * The file's SQL runs: SQLite's limits keep it small (no ATTACH, values of a
 * megabyte at most, a statement stopped after a million steps), and it runs
 * in the fuzzer's working directory (scripts/fuzz gives each target its own). */
#include "fuzz.h"

#include "pipeline.h"
#include "store.h"

#include <sqlite3.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int stop_runaway(void *ctx)
{
    return ++*(int *)ctx > 1000; /* progress calls of 1000 steps each */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const events[] = {
        "{\"page\":\"/home\",\"user\":\"u1\",\"ts\":1700000000000,\"orderId\":\"o1\","
        "\"productId\":\"p1\",\"storeId\":\"s1\",\"price\":\"1.50\",\"qty\":2,"
        "\"data\":{\"id\":\"v1\",\"a\":1}}",
        "{\"page\":\"/a\",\"ts\":\"2024-01-01T00:00:00Z\",\"sensor\":\"t1\",\"value\":\"21.5\"}"};
    /* A fresh database per input costs its migrations: the store is kept
     * while files are refused (a refused file leaves nothing behind: its
     * savepoint is rolled back) and opened afresh after a file that opened. */
    static tly_store *store;
    static int steps;
    char path[64], err[1024];
    tly_pipeline_info info;
    tly_pipeline *p = NULL;
    int fd;

    if (size > 65536)
        return 0;
    if ((fd = fuzz_memfile(data, size, path, sizeof(path))) < 0)
        return 0;
    err[0] = '\0';
    if (tly_pipeline_describe(path, &info, err, sizeof(err)) < 0)
        FUZZ_ASSERT(err[0], "describe refused without a reason");
    if (!store) {
        FUZZ_ASSERT(tly_store_open(":memory:", NULL, &store, err, sizeof(err)) == 0, "%s", err);
        sqlite3_limit(tly_store_db(store), SQLITE_LIMIT_ATTACHED, 0);
        sqlite3_limit(tly_store_db(store), SQLITE_LIMIT_LENGTH, 1 << 20);
        sqlite3_progress_handler(tly_store_db(store), 1000, stop_runaway, &steps);
    }
    steps = 0;
    err[0] = '\0';
    if (tly_pipeline_open(store, path, NULL, 0, &p, err, sizeof(err)) == 0) {
        for (size_t i = 0; i < sizeof(events) / sizeof(events[0]); i++) {
            tly_event ev = {.data = events[i], .len = strlen(events[i]), .partition = (int)i};
            tly_event_result result;
            steps = 0;
            (void)tly_pipeline_apply(p, &ev, 1, &result, NULL, err, sizeof(err));
        }
        tly_pipeline_close(p);
        tly_store_close(store);
        store = NULL;
    } else {
        FUZZ_ASSERT(err[0], "open refused without a reason");
    }
    close(fd);
    return 0;
}
