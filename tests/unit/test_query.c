/* tests/unit/test_query.c - read-only queries: answers SELECTs, refuses every
 * hostile statement class without changing the state, stops runaway queries,
 * caps rows, and reads while a writer holds a transaction. */
#include "tly_test.h"

#include "pipeline.h"
#include "query.h"
#include "store.h"

#include <sqlite3.h>
#include <stdint.h>
#include <time.h>

struct collected {
    int ncols;
    int64_t rows;
    int64_t first_int;
    char first_text[256];
};

static int on_columns(void *ctx, int count, const char *const *names)
{
    (void)names;
    ((struct collected *)ctx)->ncols = count;
    return 0;
}

static int on_row(void *ctx, sqlite3_stmt *stmt)
{
    struct collected *c = ctx;
    if (c->rows++ == 0) {
        c->first_int = sqlite3_column_int64(stmt, 0);
        snprintf(c->first_text, sizeof(c->first_text), "%s",
                 sqlite3_column_text(stmt, 0) ? (const char *)sqlite3_column_text(stmt, 0)
                                              : "NULL");
    }
    return 0;
}

static const tly_query_sink sink = {on_columns, on_row};

/* A fingerprint of everything a hostile statement could touch. */
static const char fingerprint_sql[] =
    "SELECT (SELECT count(*) FROM order_window_state) || ':' || (SELECT total(sum_micros) FROM order_window_state)"
    " || ':' || (SELECT count(*) FROM changelog) || ':' || (SELECT count(*) FROM meta)"
    " || ':' || (SELECT count(*) FROM sqlite_schema) || ':' || (SELECT group_concat(name) FROM pragma_database_list)";

static int fill(const char *path)
{
    char err[256];
    tly_store *store = NULL;
    tly_pipeline *p = NULL;
    tly_event_result results[3];
    const char *lines[] = {
        "{\"orderId\":\"1\",\"productId\":\"p1\",\"storeId\":\"s1\",\"price\":\"83.71\",\"qty\":3,\"ts\":1700000000000}",
        "{\"orderId\":\"2\",\"productId\":\"p2\",\"storeId\":\"s1\",\"price\":\"1.00\",\"qty\":1,\"ts\":1700000000000}",
        "{\"orderId\":\"3\",\"productId\":\"p3\",\"storeId\":\"s2\",\"price\":\"2.00\",\"qty\":1,\"ts\":1700000000000}"};
    tly_event events[3] = {{0}};
    int rc = -1;
    for (int i = 0; i < 3; i++) {
        events[i].data = lines[i];
        events[i].len = strlen(lines[i]);
    }
    if (tly_store_open(path, NULL, &store, err, sizeof(err)) == 0 &&
        tly_pipeline_open(store, "orders", NULL, 0, &p, err, sizeof(err)) == 0 &&
        tly_pipeline_apply(p, events, 3, results, NULL, err, sizeof(err)) == 0)
        rc = 0;
    else
        fprintf(stderr, "fill: %s\n", err);
    tly_pipeline_close(p);
    tly_store_close(store);
    return rc;
}

static void test_select(void)
{
    char path[256], err[256];
    tly_query *q = NULL;
    tly_query_options opts = {.timeout_ms = 5000, .max_rows = 0};
    struct collected c = {0};
    int truncated = -1;

    snprintf(path, sizeof(path), "%s/q.db", tly_test_dir());
    CHECK(fill(path) == 0);
    CHECK_MSG(tly_query_open(path, &opts, &q, err, sizeof(err)) == 0, "%s", err);
    CHECK_INT(
        tly_query_run(q, "SELECT sum FROM order_windows WHERE product_id = 'p1';  -- the money\n",
                      &sink, &c, &truncated, err, sizeof(err)),
        1);
    CHECK_STR(c.first_text, "251.13");
    CHECK_INT(truncated, 0);
    memset(&c, 0, sizeof(c));
    CHECK_INT(tly_query_run(q, "PRAGMA table_info(order_window_state)", &sink, &c, &truncated, err,
                            sizeof(err)),
              7); /* six columns and part */
    memset(&c, 0, sizeof(c));
    CHECK_INT(tly_query_run(q, "PRAGMA user_version", &sink, &c, &truncated, err, sizeof(err)), 1);
    CHECK(c.first_int >= 3);
    /* the row cap */
    tly_query_close(q);
    q = NULL;
    opts.max_rows = 2;
    CHECK_MSG(tly_query_open(path, &opts, &q, err, sizeof(err)) == 0, "%s", err);
    memset(&c, 0, sizeof(c));
    CHECK_INT(
        tly_query_run(q, "SELECT * FROM order_windows", &sink, &c, &truncated, err, sizeof(err)),
        2);
    CHECK_INT(truncated, 1);
    CHECK_INT(c.ncols, 5);
    /* the database must exist: a query never creates one */
    tly_query_close(q);
    q = NULL;
    snprintf(path + strlen(path), sizeof(path) - strlen(path), ".missing");
    CHECK(tly_query_open(path, &opts, &q, err, sizeof(err)) < 0);
    CHECK(access(path, F_OK) != 0);
end:
    tly_query_close(q);
}

static void test_hostile_statements_change_nothing(void)
{
    static const char *hostile[] = {
        "DELETE FROM order_window_state",
        "UPDATE order_window_state SET count = 0",
        "INSERT INTO meta VALUES ('x', 1)",
        "DROP TABLE changelog",
        "DROP VIEW order_windows",
        "CREATE TABLE evil (x)",
        "CREATE TEMP TABLE evil (x)",
        "ALTER TABLE meta ADD COLUMN evil",
        "ATTACH DATABASE '/tmp/tally-evil.db' AS evil",
        "PRAGMA writable_schema = 1",
        "PRAGMA journal_mode = DELETE",
        "PRAGMA query_only = 0",
        "PRAGMA user_version = 7",
        "SELECT load_extension('/tmp/evil.so')",
        "SELECT 1; DELETE FROM changelog",
        "VACUUM",
        "VACUUM INTO '/tmp/tally-evil-copy.db'",
        "REINDEX",
        "ANALYZE",
        "BEGIN",
        "SAVEPOINT s",
        "WITH x AS (SELECT 1) DELETE FROM meta",
        "INSERT INTO meta SELECT 'y', 2 RETURNING *",
        "UPDATE sqlite_master SET sql = 'x'",
        "SELECT * FROM pragma_table_info('meta'); PRAGMA writable_schema = 1",
        NULL};
    char path[256], err[256], before[512] = "", after[512] = "";
    tly_query *q = NULL;
    tly_query_options opts = {.timeout_ms = 5000, .max_rows = 0};
    struct collected c = {0};
    int truncated;

    snprintf(path, sizeof(path), "%s/hostile.db", tly_test_dir());
    CHECK(fill(path) == 0);
    CHECK_MSG(tly_query_open(path, &opts, &q, err, sizeof(err)) == 0, "%s", err);
    CHECK_INT(tly_query_run(q, fingerprint_sql, &sink, &c, &truncated, err, sizeof(err)), 1);
    snprintf(before, sizeof(before), "%s", c.first_text);
    for (const char **s = hostile; *s; s++) {
        err[0] = '\0';
        memset(&c, 0, sizeof(c));
        CHECK_MSG(tly_query_run(q, *s, &sink, &c, &truncated, err, sizeof(err)) < 0, "ran: %s", *s);
        CHECK_MSG(err[0] != '\0', "no message for %s", *s);
    }
    memset(&c, 0, sizeof(c));
    CHECK_INT(tly_query_run(q, fingerprint_sql, &sink, &c, &truncated, err, sizeof(err)), 1);
    snprintf(after, sizeof(after), "%s", c.first_text);
    CHECK_STR(after, before);
    CHECK(access("/tmp/tally-evil.db", F_OK) != 0);
    CHECK(access("/tmp/tally-evil-copy.db", F_OK) != 0);
    /* messages say why */
    CHECK(tly_query_run(q, "DELETE FROM meta", &sink, &c, &truncated, err, sizeof(err)) < 0);
    CHECK_MSG(strstr(err, "only SELECT") != NULL, "%s", err);
    CHECK(tly_query_run(q, "ATTACH 'x' AS y", &sink, &c, &truncated, err, sizeof(err)) < 0);
    CHECK_MSG(strstr(err, "ATTACH") != NULL, "%s", err);
    CHECK(tly_query_run(q, "SELECT 1; SELECT 2", &sink, &c, &truncated, err, sizeof(err)) < 0);
    CHECK_MSG(strstr(err, "one statement") != NULL, "%s", err);
end:
    tly_query_close(q);
}

static void test_runaway_query_is_interrupted(void)
{
    char path[256], err[256] = "";
    tly_query *q = NULL;
    tly_query_options opts = {.timeout_ms = 300, .max_rows = 0};
    struct collected c = {0};
    int truncated;
    struct timespec t0, t1;
    double seconds;

    snprintf(path, sizeof(path), "%s/runaway.db", tly_test_dir());
    CHECK(fill(path) == 0);
    CHECK_MSG(tly_query_open(path, &opts, &q, err, sizeof(err)) == 0, "%s", err);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CHECK(
        tly_query_run(
            q,
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
            &sink, &c, &truncated, err, sizeof(err)) < 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    seconds = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    CHECK_MSG(strstr(err, "interrupted") != NULL, "%s", err);
    /* Generous bound: this checks that it stops at all, not how fast. */
    CHECK_MSG(seconds < 20.0, "took %.1f s", seconds);
    /* and the handle still works */
    memset(&c, 0, sizeof(c));
    CHECK_INT(tly_query_run(q, "SELECT count(*) FROM order_windows", &sink, &c, &truncated, err,
                            sizeof(err)),
              1);
    CHECK_INT(c.first_int, 3);
end:
    tly_query_close(q);
}

static void test_reads_while_writer_is_open(void)
{
    char path[256], err[256];
    tly_store *store = NULL;
    tly_query *q = NULL;
    tly_query_options opts = {.timeout_ms = 2000, .max_rows = 0};
    struct collected c = {0};
    int truncated;

    snprintf(path, sizeof(path), "%s/writer.db", tly_test_dir());
    CHECK(fill(path) == 0);
    CHECK_MSG(tly_store_open(path, NULL, &store, err, sizeof(err)) == 0, "%s", err);
    CHECK(tly_store_begin(store, err, sizeof(err)) == 0);
    CHECK(tly_store_exec(store, "DELETE FROM order_window_state", err, sizeof(err)) == 0);
    CHECK_MSG(tly_query_open(path, &opts, &q, err, sizeof(err)) == 0, "%s", err);
    /* the uncommitted delete is invisible, and the read is not blocked */
    CHECK_INT(tly_query_run(q, "SELECT count(*) FROM order_windows", &sink, &c, &truncated, err,
                            sizeof(err)),
              1);
    CHECK_INT(c.first_int, 3);
    CHECK(tly_store_commit(store, err, sizeof(err)) == 0);
    memset(&c, 0, sizeof(c));
    CHECK_INT(tly_query_run(q, "SELECT count(*) FROM order_windows", &sink, &c, &truncated, err,
                            sizeof(err)),
              1);
    CHECK_INT(c.first_int, 0);
end:
    tly_query_close(q);
    tly_store_close(store);
}

static const tly_testcase cases[] = {
    {"select", test_select},
    {"hostile_statements_change_nothing", test_hostile_statements_change_nothing},
    {"runaway_query_is_interrupted", test_runaway_query_is_interrupted},
    {"reads_while_writer_is_open", test_reads_while_writer_is_open},
    {NULL, NULL}};

int main(int argc, char **argv)
{
    return tly_test_main(argc, argv, cases);
}
