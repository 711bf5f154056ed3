/* tests/fuzz/fuzz_event_apply.c - one event through whole pipelines on
 * in-memory databases, decoded once by the fast reader (engine/jsonscan.c)
 * and once by json-c (the path every event the fast reader declines takes).
 * Any bytes get a result; both decodings must give the same result (status,
 * reason, changelog rows) and, for the capture pipelines that store every
 * field they decode, the same rows. The pipelines: orders, telemetry, and two
 * files with a field of every type, one with every field optional and an
 * @each over "data", one with every field required. Each apply runs in a
 * transaction that is rolled back, so every input starts from the same state. */
#include "fuzz.h"

#include "pipeline.h"
#include "store.h"

#include <sqlite3.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char capture[] =
    "-- @pipeline %s\n"
    "-- @entity %s\n"
    "-- @field f_id    id|alt.id    id        %s\n"
    "-- @field f_text  text         text      %s\n"
    "-- @field f_int   n.int        int       %s\n"
    "-- @field f_dec   dec|alt.dec  decimal6  %s\n"
    "-- @field f_tms   tms          time_ms   %s\n"
    "-- @field f_tany  tany|a.b.c   time_any  %s\n"
    "-- @field f_bool  flag         bool      %s\n"
    "-- @field f_json  j            json      %s\n"
    "%s"
    "-- @setup\n"
    "CREATE TABLE IF NOT EXISTS capture (n INTEGER PRIMARY KEY, part, event, f_id, f_text,\n"
    "    f_int, f_dec, f_tms, f_tany, f_bool, f_json, k, v);\n"
    "-- @stage\n"
    "INSERT INTO capture (part, event, f_id, f_text, f_int, f_dec, f_tms, f_tany, f_bool,\n"
    "    f_json, k, v) VALUES (:partition, :event, :f_id, :f_text, :f_int, :f_dec, :f_tms,\n"
    "    :f_tany, :f_bool, :f_json, %s);\n"
    "-- @merge\n"
    "DELETE FROM capture WHERE n < 0;\n";

#define PIPELINES 4

static struct {
    tly_store *store;
    tly_pipeline *pipeline;
    bool captures;
} pipelines[PIPELINES];

static void open_all(void)
{
    char err[512], path[64], text[4096];
    for (int i = 0; i < PIPELINES; i++) {
        const char *name = i == 0 ? "orders" : i == 1 ? "telemetry" : path;
        int fd = -1;
        if (i >= 2) {
            const char *mode = i == 2 ? "optional" : "required",
                       *own = i == 2 ? "capture_optional" : "capture_required";
            int n =
                snprintf(text, sizeof(text), capture, own, own, mode, mode, mode, mode, mode, mode,
                         mode, mode, i == 2 ? "-- @each key value data except skip,id\n" : "",
                         i == 2 ? ":key, :value" : "NULL, NULL");
            fd = fuzz_memfile((const uint8_t *)text, (size_t)n, path, sizeof(path));
            FUZZ_ASSERT(fd >= 0, "memfd");
            pipelines[i].captures = true;
        }
        FUZZ_ASSERT(tly_store_open(":memory:", NULL, &pipelines[i].store, err, sizeof(err)) == 0,
                    "%s", err);
        FUZZ_ASSERT(tly_pipeline_open(pipelines[i].store, name, NULL, 0, &pipelines[i].pipeline,
                                      err, sizeof(err)) == 0,
                    "%s: %s", name, err);
        if (fd >= 0)
            close(fd);
    }
}

/* The capture rows the event left, as text ("" for a pipeline without). */
static char *captured(int i)
{
    sqlite3_stmt *stmt = NULL;
    char *out;
    if (!pipelines[i].captures)
        return strdup("");
    FUZZ_ASSERT(sqlite3_prepare_v2(tly_store_db(pipelines[i].store),
                                   "SELECT coalesce(group_concat(quote(part) || ',' || "
                                   "quote(f_id) || ',' || quote(f_text) || ',' || quote(f_int) || "
                                   "',' || quote(f_dec) || ',' || quote(f_tms) || ',' || "
                                   "quote(f_tany) || ',' || quote(f_bool) || ',' || quote(f_json) "
                                   "|| ',' || quote(k) || ',' || quote(v), char(10)), '') "
                                   "FROM (SELECT * FROM capture ORDER BY n)",
                                   -1, &stmt, NULL) == SQLITE_OK &&
                    sqlite3_step(stmt) == SQLITE_ROW,
                "%s", sqlite3_errmsg(tly_store_db(pipelines[i].store)));
    out = strdup((const char *)sqlite3_column_text(stmt, 0));
    sqlite3_finalize(stmt);
    return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool opened;
    tly_event ev = {.data = (const char *)data, .len = size, .partition = 1};
    char err[512];

    if (!opened) {
        open_all();
        opened = true;
    }
    for (int i = 0; i < PIPELINES; i++) {
        tly_event_result results[2];
        tly_batch_stats stats[2];
        char *rows[2];
        for (int k = 0; k < 2; k++) {
            tly_pipeline_set_fast_json(pipelines[i].pipeline, k == 0);
            FUZZ_ASSERT(tly_store_begin(pipelines[i].store, err, sizeof(err)) == 0, "%s", err);
            FUZZ_ASSERT(tly_pipeline_apply(pipelines[i].pipeline, &ev, 1, &results[k], &stats[k],
                                           err, sizeof(err)) == 0,
                        "pipeline %d: %s", i, err);
            rows[k] = captured(i);
            tly_store_rollback(pipelines[i].store);
        }
        FUZZ_ASSERT(results[0].status == results[1].status &&
                        strcmp(results[0].reason, results[1].reason) == 0,
                    "pipeline %d, <%.*s>: fast %d \"%s\", json-c %d \"%s\"", i, (int)size,
                    (const char *)data, results[0].status, results[0].reason, results[1].status,
                    results[1].reason);
        FUZZ_ASSERT(stats[0].changes == stats[1].changes, "pipeline %d: changes %lld vs %lld", i,
                    (long long)stats[0].changes, (long long)stats[1].changes);
        FUZZ_ASSERT(strcmp(rows[0], rows[1]) == 0, "pipeline %d, <%.*s>: fast\n%s\njson-c\n%s", i,
                    (int)size, (const char *)data, rows[0], rows[1]);
        free(rows[0]);
        free(rows[1]);
    }
    return 0;
}
