/* tests/unit/test_pipeline.c - decoding, exact money, windows, latest-wins,
 * coalescing, malformed input, a user-defined pipeline, consistent readers. */
#include "tly_test.h"

#include <time.h>

#include "pipeline.h"
#include "store.h"

#include <sqlite3.h>
#include <stdint.h>
#include <sys/wait.h>

static tly_store *open_store(const char *name)
{
    static char path[256];
    char err[256];
    tly_store *store = NULL;
    snprintf(path, sizeof(path), "%s/%s", tly_test_dir(), name);
    if (tly_store_open(path, NULL, &store, err, sizeof(err)) < 0)
        fprintf(stderr, "open %s: %s\n", path, err);
    return store;
}

/* Applies NULL-terminated event strings as one batch; results optional. */
static int apply(tly_pipeline *p, const char *const *lines, tly_event_result *results,
                 tly_batch_stats *stats)
{
    tly_event events[256] = {{0}};
    tly_event_result local[256];
    char err[256];
    size_t n = 0;
    for (; lines[n] && n < 256; n++) {
        events[n].data = lines[n];
        events[n].len = strlen(lines[n]);
    }
    if (tly_pipeline_apply(p, events, n, results ? results : local, stats, err, sizeof(err)) < 0) {
        fprintf(stderr, "apply: %s\n", err);
        return -1;
    }
    return 0;
}

#define query_int(store, sql) tly_test_query_int(tly_store_db(store), sql)
#define query_text(store, sql) tly_test_query_text(tly_store_db(store), sql)

static void test_orders_money_is_exact(void)
{
    tly_store *store = open_store("money.db");
    tly_pipeline *p = NULL;
    char err[256];
    const char *batch[] = {
        "{\"orderId\":\"o1\",\"productId\":\"p1\",\"storeId\":\"s1\",\"price\":83.71,\"qty\":1,\"ts\":1700000001000}",
        "{\"orderId\":\"o2\",\"productId\":\"p1\",\"storeId\":\"s1\",\"price\":\"83.71\",\"qty\":1,\"ts\":1700000002000}",
        "{\"orderId\":\"o3\",\"productId\":\"p1\",\"storeId\":\"s1\",\"price\":8.371e1,\"qty\":1,\"ts\":1700000003000}",
        "{\"orderId\":\"o4\",\"productId\":\"p2\",\"storeId\":\"s1\",\"price\":0.1,\"qty\":1,\"ts\":1700000003000}",
        "{\"orderId\":\"o5\",\"productId\":\"p2\",\"storeId\":\"s1\",\"price\":0.2,\"qty\":1,\"ts\":1700000003000}",
        "{\"orderId\":\"o6\",\"productId\":\"p3\",\"storeId\":\"s1\",\"price\":10,\"qty\":3,\"ts\":1700000003000}",
        NULL};
    CHECK(store);
    CHECK_MSG(tly_pipeline_open(store, "orders", NULL, 0, &p, err, sizeof(err)) == 0, "%s", err);
    CHECK(apply(p, batch, NULL, NULL) == 0);
    CHECK_STR(query_text(store, "SELECT sum FROM order_windows WHERE product_id = 'p1'"), "251.13");
    CHECK_INT(query_int(store, "SELECT count FROM order_windows WHERE product_id = 'p1'"), 3);
    CHECK_STR(query_text(store, "SELECT sum FROM order_windows WHERE product_id = 'p2'"), "0.30");
    CHECK_STR(query_text(store, "SELECT sum FROM order_windows WHERE product_id = 'p3'"), "30.00");
    CHECK_INT(
        query_int(store, "SELECT typeof(sum_micros) = 'integer' FROM order_window_state LIMIT 1"),
        1);
end:
    tly_pipeline_close(p);
    tly_store_close(store);
}

static void test_orders_windows(void)
{
    tly_store *store = open_store("windows.db");
    tly_pipeline *p = NULL, *other = NULL;
    const char *five_minutes[] = {"window_ms=300000", NULL};
    const char *one_minute[] = {"window_ms=60000", NULL};
    char err[256] = "";
    const char *batch[] = {
        /* normTs wins over ts (a string here); 1700000000000 falls in the 5-minute window
           1699999800000 */
        "{\"orderId\":\"o1\",\"productId\":\"p\",\"storeId\":\"s\",\"price\":1,\"qty\":1,\"ts\":\"2023-11-14T22:13:20Z\",\"normTs\":1700000000000,\"validated\":true}",
        /* exactly on a boundary */
        "{\"orderId\":\"o2\",\"productId\":\"p\",\"storeId\":\"s\",\"price\":1,\"qty\":1,\"ts\":1699999800000}",
        /* one ms before it */
        "{\"orderId\":\"o3\",\"productId\":\"p\",\"storeId\":\"s\",\"price\":1,\"qty\":1,\"ts\":1699999799999}",
        NULL};
    CHECK(store);
    CHECK_MSG(tly_pipeline_open(store, "orders", five_minutes, 0, &p, err, sizeof(err)) == 0, "%s",
              err);
    CHECK(apply(p, batch, NULL, NULL) == 0);
    CHECK_INT(
        query_int(store, "SELECT count FROM order_windows WHERE window_start = 1699999800000"), 2);
    CHECK_INT(
        query_int(store, "SELECT count FROM order_windows WHERE window_start = 1699999500000"), 1);
    CHECK_INT(query_int(store, "SELECT count(*) FROM order_windows"), 2);
    /* A second pipeline with another window size on the same database is refused. */
    CHECK(tly_pipeline_open(store, "orders", one_minute, 0, &other, err, sizeof(err)) < 0);
    CHECK_MSG(strstr(err, "window_ms=300000") && strstr(err, "60000"), "%s", err);
    /* An unknown setting is refused by name. */
    {
        const char *bogus[] = {"windw_ms=1", NULL};
        CHECK(tly_pipeline_open(store, "orders", bogus, 0, &other, err, sizeof(err)) < 0);
        CHECK_MSG(strstr(err, "windw_ms") != NULL, "%s", err);
    }
end:
    tly_pipeline_close(p);
    tly_pipeline_close(other);
    tly_store_close(store);
}

static void test_orders_coalesce_per_batch(void)
{
    tly_store *store = open_store("coalesce.db");
    tly_pipeline *p = NULL;
    tly_batch_stats stats = {0};
    char err[256], lines[40][160];
    const char *batch[41];
    CHECK(store);
    CHECK_MSG(tly_pipeline_open(store, "orders", NULL, 0, &p, err, sizeof(err)) == 0, "%s", err);
    for (int i = 0; i < 40; i++) {
        snprintf(
            lines[i], sizeof(lines[i]),
            "{\"orderId\":\"o%d\",\"productId\":\"p%d\",\"storeId\":\"s\",\"price\":\"2.50\",\"qty\":2,\"ts\":1700000000000}",
            i, i % 2);
        batch[i] = lines[i];
    }
    batch[40] = NULL;
    CHECK(apply(p, batch, NULL, &stats) == 0);
    CHECK_INT(stats.applied, 40);
    CHECK_INT(stats.changes, 2); /* one changelog row per key per batch */
    CHECK_INT(query_int(store, "SELECT count(*) FROM changelog"), 2);
    CHECK_INT(query_int(store, "SELECT max(key_seq) FROM order_window_state"), 1);
    CHECK(apply(p, batch, NULL, &stats) == 0);
    CHECK_INT(stats.changes, 2);
    CHECK_INT(query_int(store, "SELECT min(key_seq) FROM order_window_state"), 2);
    CHECK_STR(query_text(store, "SELECT sum FROM order_windows WHERE product_id = 'p0'"), "200.00");
    CHECK_INT(query_int(store, "SELECT count FROM order_windows WHERE product_id = 'p0'"), 40);
    /* The changelog carries the after-image, the delta and the key. */
    CHECK_STR(query_text(store, "SELECT key FROM changelog WHERE seq = 3"), "s#p0#1699999980000");
    CHECK_INT(query_int(store, "SELECT image ->> '$.sum_micros' FROM changelog WHERE seq = 3"),
              200000000);
    CHECK_INT(query_int(store, "SELECT delta ->> '$.count' FROM changelog WHERE seq = 3"), 20);
    CHECK_INT(
        query_int(store, "SELECT value FROM meta WHERE key = 'pipeline.orders.events_applied'"),
        80);
end:
    tly_pipeline_close(p);
    tly_store_close(store);
}

struct bad_case {
    const char *line;
    const char *reason_part;
};

static void test_orders_malformed(void)
{
    static const struct bad_case cases[] = {
        {"not json", "invalid JSON"},
        {"{\"orderId\":\"o\",\"productId\":\"p\"", "truncated"},
        {"[1,2,3]", "must be a JSON object"},
        {"{\"orderId\":\"o\",\"productId\":\"p\",\"storeId\":\"s\",\"price\":1,\"qty\":1}",
         "missing field \"normTs|ts\""},
        {"{\"orderId\":\"o\",\"productId\":\"p\",\"price\":1,\"qty\":1,\"ts\":1}",
         "missing field \"storeId\""},
        {"{\"orderId\":\"o\",\"productId\":\"p\",\"storeId\":\"s\",\"price\":1,\"qty\":\"x\",\"ts\":1}",
         "must be an integer"},
        {"{\"orderId\":\"o\",\"productId\":\"p\",\"storeId\":{},\"price\":1,\"qty\":1,\"ts\":1}",
         "must be a string or integer"},
        {"{\"orderId\":\"o\",\"productId\":\"p\",\"storeId\":\"s\",\"price\":true,\"qty\":1,\"ts\":1}",
         "must be a number or decimal string"},
        {"{\"orderId\":\"o\",\"productId\":\"p\",\"storeId\":\"s\",\"price\":1.0000001,\"qty\":1,\"ts\":1}",
         "more than 6 decimal places"},
        {"{\"orderId\":\"o\",\"productId\":\"p\",\"storeId\":\"s\",\"price\":1e400,\"qty\":1,\"ts\":1}",
         "too large"},
        {"{\"orderId\":\"o\",\"productId\":\"p\",\"storeId\":\"s\",\"price\":\"12abc\",\"qty\":1,\"ts\":1}",
         "not a decimal"},
        {"{\"orderId\":\"o\",\"productId\":\"p\",\"storeId\":\"s\",\"price\":-1,\"qty\":1,\"ts\":1}",
         "price must be >= 0"},
        {"{\"orderId\":\"o\",\"productId\":\"p\",\"storeId\":\"s\",\"price\":1,\"qty\":5000,\"ts\":1}",
         "qty must be between"},
        {"{\"orderId\":\"o\",\"productId\":\"p\",\"storeId\":\"s\",\"price\":1,\"qty\":1,\"ts\":99999999999999999999}",
         "out of range"},
        {"{\"orderId\":\"o\",\"productId\":\"p\",\"storeId\":\"s\",\"price\":1,\"qty\":1,\"ts\":-5}",
         "epoch milliseconds"},
        {"{\"orderId\":\"o\",\"productId\":\"p\",\"storeId\":\"s\",\"price\":1,\"qty\":1,\"ts\":1,\"validated\":false}",
         "not validated"},
        {"{\"orderId\":\"o\",\"productId\":\"p\",\"storeId\":\"s\",\"price\":1,\"qty\":1,\"ts\":1} trailing",
         "invalid JSON"},
        {"{\"orderId\":\"o\",\"productId\":\"p\xff\",\"storeId\":\"s\",\"price\":1,\"qty\":1,\"ts\":1}",
         "invalid UTF-8"},
        {"{\"orderId\":\"o\",\"productId\":\"p\xc0\xaf\",\"storeId\":\"s\",\"price\":1,\"qty\":1,\"ts\":1}",
         "invalid UTF-8"},
        {"{\"orderId\":\"o\",\"productId\":\"p\xed\xa0\x80\",\"storeId\":\"s\",\"price\":1,\"qty\":1,\"ts\":1}",
         "invalid UTF-8"},
        {"42", "must be a JSON object, got int"},
        {"null", "must be a JSON object, got null"},
        {"{\"orderId\":\"o\",\"productId\":\"\",\"storeId\":\"s\",\"price\":1,\"qty\":1,\"ts\":1}",
         "is empty"},
        {"{\"orderId\":\"o\",\"productId\":\"p\",\"storeId\":\"s\",\"price\":NaN,\"qty\":1,\"ts\":1}",
         "not a decimal"},
    };
    const size_t ncases = sizeof(cases) / sizeof(cases[0]);
    tly_store *store = open_store("malformed.db");
    tly_pipeline *p = NULL;
    tly_event events[64] = {{0}};
    tly_event_result results[64];
    tly_batch_stats stats;
    const char *good =
        "{\"orderId\":\"g\",\"productId\":\"p\",\"storeId\":\"s\",\"price\":\"1.25\",\"qty\":2,\"ts\":1700000000000}";
    char err[256];
    size_t n = 0;

    CHECK(store);
    CHECK_MSG(tly_pipeline_open(store, "orders", NULL, 0, &p, err, sizeof(err)) == 0, "%s", err);
    /* good, bad, good, bad, ... in one batch */
    for (size_t i = 0; i < ncases; i++) {
        events[n].data = good;
        events[n++].len = strlen(good);
        events[n].data = cases[i].line;
        events[n++].len = strlen(cases[i].line);
    }
    /* an event with a NUL byte inside */
    events[n].data = "{\"orderId\":\"o\0\"}";
    events[n++].len = 16;
    CHECK_MSG(tly_pipeline_apply(p, events, n, results, &stats, err, sizeof(err)) == 0, "%s", err);
    for (size_t i = 0; i < ncases; i++) {
        CHECK_INT(results[2 * i].status, TLY_EVENT_APPLIED);
        CHECK_MSG(results[2 * i + 1].status == TLY_EVENT_REJECTED, "case %zu accepted: %s", i,
                  cases[i].line);
        CHECK_MSG(strstr(results[2 * i + 1].reason, cases[i].reason_part) != NULL,
                  "case %zu: reason \"%s\" lacks \"%s\"", i, results[2 * i + 1].reason,
                  cases[i].reason_part);
    }
    CHECK_INT(results[n - 1].status, TLY_EVENT_REJECTED);
    CHECK(strstr(results[n - 1].reason, "NUL") != NULL);
    CHECK_INT(stats.applied, (int64_t)ncases);
    CHECK_INT(stats.rejected, (int64_t)ncases + 1);
    /* Only the good events reached the state. */
    CHECK_INT(query_int(store, "SELECT count FROM order_windows"), (int64_t)ncases);
    CHECK_INT(query_int(store, "SELECT sum_micros FROM order_window_state"),
              2500000 * (int64_t)ncases);
    CHECK_INT(
        query_int(store, "SELECT value FROM meta WHERE key = 'pipeline.orders.events_rejected'"),
        (int64_t)ncases + 1);
end:
    tly_pipeline_close(p);
    tly_store_close(store);
}

static void test_telemetry_latest_wins(void)
{
    tly_store *store = open_store("telemetry.db");
    tly_pipeline *p = NULL;
    tly_event_result results[8];
    tly_batch_stats stats;
    char err[256];
    const char *batch1[] = {
        "{\"data\":{\"id\":\"VIN1\",\"speed\":80.50,\"door\":\"closed\"},\"received_at\":2000,\"produced_at\":1990}",
        /* older, later in the same batch: must not win */
        "{\"data\":{\"id\":\"VIN1\",\"speed\":10},\"received_at\":1000,\"produced_at\":990}",
        "{\"data\":{\"id\":\"\",\"speed\":1},\"received_at\":1000}",
        "{\"data\":{\"id\":\"VIN2\",\"fuel\":{\"level\":0.5,\"unit\":\"ratio\"}},\"received_at\":1500}",
        NULL};
    const char *batch2[] = {
        /* older, in a later batch: must not win either */
        "{\"data\":{\"id\":\"VIN1\",\"speed\":20,\"door\":\"open\"},\"received_at\":1999,\"produced_at\":1900}",
        /* newer for one sensor only */
        "{\"data\":{\"id\":\"VIN1\",\"door\":\"open\"},\"received_at\":2500,\"produced_at\":2490}",
        "{\"data\":{\"speed\":1},\"received_at\":1000}",
        "{\"data\":{\"id\":\"VIN3\",\"speed\":1},\"received_at\":\"soon\"}",
        "{\"data\":\"VIN4\",\"received_at\":1000}", NULL};

    CHECK(store);
    CHECK_MSG(tly_pipeline_open(store, "telemetry", NULL, 0, &p, err, sizeof(err)) == 0, "%s", err);
    CHECK(apply(p, batch1, results, &stats) == 0);
    CHECK_INT(results[2].status, TLY_EVENT_SKIPPED);
    CHECK(strstr(results[2].reason, "empty data.id") != NULL);
    CHECK_INT(stats.applied, 3);
    CHECK_INT(stats.skipped, 1);
    CHECK_STR(
        query_text(store,
                   "SELECT value FROM vehicle_sensor_state WHERE vin='VIN1' AND sensor='speed'"),
        "80.50");
    CHECK(apply(p, batch2, results, &stats) == 0);
    CHECK_INT(results[2].status, TLY_EVENT_REJECTED);
    CHECK(strstr(results[2].reason, "missing field \"data.id\"") != NULL);
    CHECK_INT(results[3].status, TLY_EVENT_REJECTED);
    CHECK_INT(results[4].status, TLY_EVENT_REJECTED);
    CHECK_INT(stats.applied, 2);
    CHECK_STR(
        query_text(store, "SELECT record FROM vehicle_latest WHERE vin='VIN1'"),
        "{\"data\":{\"id\":\"VIN1\",\"door\":\"open\",\"speed\":80.50},\"received_at\":2500,\"produced_at\":2490}");
    CHECK_STR(
        query_text(store, "SELECT record FROM vehicle_latest WHERE vin='VIN2'"),
        "{\"data\":{\"id\":\"VIN2\",\"fuel\":{\"level\":0.5,\"unit\":\"ratio\"}},\"received_at\":1500,\"produced_at\":null}");
    CHECK_INT(query_int(store, "SELECT received_at FROM vehicle_latest WHERE vin='VIN1'"), 2500);
    /* One changelog row per changed vehicle per batch, with the whole vehicle:
     * VIN1 changed in both batches (the newer door), VIN2 only in the first. */
    CHECK_INT(query_int(store, "SELECT count(*) FROM changelog WHERE key = 'VIN1'"), 2);
    CHECK_INT(query_int(store, "SELECT count(*) FROM changelog WHERE key = 'VIN2'"), 1);
    CHECK_STR(
        query_text(store,
                   "SELECT image FROM changelog WHERE key = 'VIN1' ORDER BY seq DESC LIMIT 1"),
        "{\"vin\":\"VIN1\",\"sensors\":{\"door\":[\"open\",2500,2490,2],"
        "\"speed\":[80.50,2000,1990,1]}}");
    CHECK_INT(
        query_int(store,
                  "SELECT key_seq FROM changelog WHERE key = 'VIN1' ORDER BY seq DESC LIMIT 1"),
        3);
end:
    tly_pipeline_close(p);
    tly_store_close(store);
}

/* A reading that wins moves its state row to the reading's input partition
 * (and counts it in state.rows_moved); one that loses, or repeats the state's
 * reading exactly, moves nothing. */
static void test_telemetry_partition_moves(void)
{
    tly_store *store = open_store("telemetry_moves.db");
    tly_pipeline *p = NULL;
    char err[256];
    static const struct {
        int batch, partition;
        const char *line;
    } input[] = {
        {1, 0, "{\"data\":{\"id\":\"VIN1\",\"speed\":1,\"door\":\"a\"},\"received_at\":1000}"},
        {1, 0, "{\"data\":{\"id\":\"VIN2\",\"speed\":1},\"received_at\":1000}"},
        /* newer: wins, moves to 1 */
        {2, 1, "{\"data\":{\"id\":\"VIN1\",\"speed\":2},\"received_at\":2000}"},
        /* the state's own reading again: changes nothing, moves nothing */
        {2, 2, "{\"data\":{\"id\":\"VIN1\",\"door\":\"a\"},\"received_at\":1000}"},
        /* older: loses */
        {2, 3, "{\"data\":{\"id\":\"VIN1\",\"door\":\"b\"},\"received_at\":500}"},
        {2, 3, "{\"data\":{\"id\":\"VIN2\",\"speed\":0},\"received_at\":999}"},
        /* same time, another value: wins, moves to 4 */
        {3, 4, "{\"data\":{\"id\":\"VIN1\",\"door\":\"c\"},\"received_at\":1000}"},
        /* same partition: wins, nothing moves */
        {3, 0, "{\"data\":{\"id\":\"VIN2\",\"speed\":3},\"received_at\":3000}"},
    };
    size_t n = sizeof(input) / sizeof(*input);

    CHECK(store);
    CHECK_MSG(tly_pipeline_open(store, "telemetry", NULL, 0, &p, err, sizeof(err)) == 0, "%s", err);
    for (int batch = 1; batch <= 3; batch++) {
        tly_event events[8] = {{0}};
        tly_event_result results[8];
        size_t count = 0;
        for (size_t i = 0; i < n; i++)
            if (input[i].batch == batch) {
                events[count].data = input[i].line;
                events[count].len = strlen(input[i].line);
                events[count].partition = input[i].partition;
                count++;
            }
        CHECK_MSG(tly_pipeline_apply(p, events, count, results, NULL, err, sizeof(err)) == 0, "%s",
                  err);
        for (size_t i = 0; i < count; i++)
            CHECK_INT(results[i].status, TLY_EVENT_APPLIED);
        if (batch == 2) {
            CHECK_STR(query_text(store,
                                 "SELECT group_concat(vin || '.' || sensor || '=' || value "
                                 "|| '@' || part || '#' || key_seq, ' ') FROM "
                                 "(SELECT * FROM vehicle_sensor_state ORDER BY vin, sensor)"),
                      "VIN1.door=\"a\"@0#1 VIN1.speed=2@1#2 VIN2.speed=1@0#1");
            CHECK_INT(query_int(store, "SELECT value FROM meta WHERE key = 'state.rows_moved'"), 1);
        }
    }
    CHECK_STR(query_text(store,
                         "SELECT group_concat(vin || '.' || sensor || '=' || value || '@' || "
                         "part || '#' || key_seq, ' ') FROM "
                         "(SELECT * FROM vehicle_sensor_state ORDER BY vin, sensor)"),
              "VIN1.door=\"c\"@4#2 VIN1.speed=2@1#2 VIN2.speed=3@0#2");
    CHECK_INT(query_int(store, "SELECT value FROM meta WHERE key = 'state.rows_moved'"), 2);
    /* VIN1 changed in all three batches (the repeated door counts as seen), VIN2 in 1 and 3 */
    CHECK_STR(query_text(store, "SELECT group_concat(key || ':' || key_seq || ':' || part, ' ') "
                                "FROM (SELECT * FROM changelog ORDER BY seq)"),
              "VIN1:2:0 VIN2:1:0 VIN1:3:1 VIN1:4:4 VIN2:2:0");
end:
    tly_pipeline_close(p);
    tly_store_close(store);
}

/* A third pipeline is a SQL file, not C: page views counted per page, with a
 * CHECK constraint in its own table that only the database can enforce. */
static const char clicks_sql[] =
    "-- @pipeline clicks\n"
    "-- @entity page\n"
    "-- @field page   page  text  required\n"
    "-- @field user   user  id    optional\n"
    "-- @setup\n"
    "CREATE TABLE IF NOT EXISTS page_state (page TEXT PRIMARY KEY CHECK (length(page) <= 10),\n"
    "    views INTEGER NOT NULL, key_seq INTEGER NOT NULL) STRICT;\n"
    "CREATE TRIGGER IF NOT EXISTS page_state_insert AFTER INSERT ON page_state BEGIN\n"
    "  INSERT INTO changelog (entity, key, key_seq, image, changed_ms)\n"
    "  VALUES ('page', NEW.page, NEW.key_seq, json_object('page', NEW.page, 'views', NEW.views), 0);\n"
    "END;\n"
    "CREATE TRIGGER IF NOT EXISTS page_state_update AFTER UPDATE ON page_state BEGIN\n"
    "  INSERT INTO changelog (entity, key, key_seq, image, changed_ms)\n"
    "  VALUES ('page', NEW.page, NEW.key_seq, json_object('page', NEW.page, 'views', NEW.views), 0);\n"
    "END;\n"
    "CREATE TEMP TABLE IF NOT EXISTS clicks_stage (page TEXT PRIMARY KEY, views INTEGER);\n"
    "-- @stage\n"
    "INSERT INTO temp.clicks_stage VALUES (:page, 1) ON CONFLICT DO UPDATE SET views = views + 1;\n"
    "-- @merge\n"
    "INSERT INTO page_state SELECT page, views, 1 FROM temp.clicks_stage WHERE true\n"
    "ON CONFLICT DO UPDATE SET views = page_state.views + excluded.views, key_seq = page_state.key_seq + 1;\n"
    "DELETE FROM temp.clicks_stage;\n"
    "-- @replay\n"
    "INSERT INTO page_state SELECT :image ->> '$.page', :image ->> '$.views', :key_seq WHERE true\n"
    "ON CONFLICT DO UPDATE SET views = excluded.views, key_seq = excluded.key_seq\n"
    "WHERE excluded.key_seq > page_state.key_seq;\n";

static void test_user_pipeline_and_isolation(void)
{
    const char *dir = tly_test_dir();
    char path[256], db_path[256], err[256];
    tly_store *store = NULL;
    tly_pipeline *p = NULL;
    tly_event_result results[8];
    tly_batch_stats stats;
    FILE *f;
    const char *batch[] = {"{\"page\":\"home\",\"user\":1}",
                           "{\"page\":\"about\"}",
                           "{\"page\":\"a-very-long-page-name\"}",
                           "{\"page\":\"home\",\"user\":\"u2\"}",
                           "{\"page\":5}",
                           NULL};

    snprintf(path, sizeof(path), "%s/clicks.sql", dir);
    snprintf(db_path, sizeof(db_path), "%s/clicks.db", dir);
    f = fopen(path, "w");
    CHECK(f);
    fputs(clicks_sql, f);
    fclose(f);
    CHECK_MSG(tly_store_open(db_path, NULL, &store, err, sizeof(err)) == 0, "%s", err);
    CHECK_MSG(tly_pipeline_open(store, path, NULL, 0, &p, err, sizeof(err)) == 0, "%s", err);
    CHECK_STR(tly_pipeline_name(p), "clicks");
    CHECK_STR(tly_pipeline_entity(p), "page");
    CHECK(apply(p, batch, results, &stats) == 0);
    /* The CHECK constraint failed in @merge; only that event is rejected. */
    CHECK_INT(results[0].status, TLY_EVENT_APPLIED);
    CHECK_INT(results[1].status, TLY_EVENT_APPLIED);
    CHECK_INT(results[2].status, TLY_EVENT_REJECTED);
    CHECK_MSG(strstr(results[2].reason, "CHECK constraint") != NULL, "%s", results[2].reason);
    CHECK_INT(results[3].status, TLY_EVENT_APPLIED);
    CHECK_INT(results[4].status, TLY_EVENT_REJECTED);
    CHECK_INT(stats.applied, 3);
    CHECK_INT(query_int(store, "SELECT views FROM page_state WHERE page = 'home'"), 2);
    CHECK_INT(query_int(store, "SELECT count(*) FROM page_state"), 2);
end:
    tly_pipeline_close(p);
    tly_store_close(store);
}

static void test_bad_pipeline_files(void)
{
    static const struct bad_case files[] = {
        {"-- @pipeline x\n-- @entity e\n-- @stage\nSELECT :nope;\n-- @merge\nSELECT 1;\n", ":nope"},
        {"-- @pipeline x\n-- @entity e\n-- @field a a wat required\n", "unknown type"},
        {"-- @pipeline x\n-- @entity e\n-- @frobnicate\n", "unknown directive"},
        {"-- @entity e\n-- @stage\nSELECT 1;\n", "@pipeline"},
        {"-- @pipeline x\n-- @entity e\n-- @stage\nSELEKT 1;\n", "syntax error"},
        {"-- @pipeline x\n-- @entity e\n-- @stage\nSELECT 1;\n", "needs @state and @fold"},
        {"-- @pipeline x\n-- @entity e\n-- @field k id id required\n-- @each n v data\n"
         "-- @setup\nCREATE TEMP TABLE IF NOT EXISTS s (k, n, v);\n-- @stage\n"
         "INSERT INTO s SELECT :k, key, value FROM tly_each(:each);\n"
         "INSERT INTO s VALUES (:k, :n, :v);\n-- @merge\nSELECT 1;\n",
         "statement 2 does not read tly_each(:each)"},
    };
    const char *dir = tly_test_dir();
    char path[256], db_path[256], err[256];
    tly_store *store = NULL;
    tly_pipeline *p = NULL;

    snprintf(db_path, sizeof(db_path), "%s/bad.db", dir);
    CHECK_MSG(tly_store_open(db_path, NULL, &store, err, sizeof(err)) == 0, "%s", err);
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        FILE *f;
        snprintf(path, sizeof(path), "%s/bad%zu.sql", dir, i);
        f = fopen(path, "w");
        CHECK(f);
        fputs(files[i].line, f);
        fclose(f);
        err[0] = '\0';
        CHECK_MSG(tly_pipeline_open(store, path, NULL, 0, &p, err, sizeof(err)) < 0,
                  "file %zu opened", i);
        CHECK_MSG(strstr(err, files[i].reason_part) != NULL, "file %zu: \"%s\"", i, err);
    }
    CHECK(tly_pipeline_open(store, "nonesuch", NULL, 0, &p, err, sizeof(err)) < 0);
    CHECK_MSG(strstr(err, "orders") && strstr(err, "telemetry"), "%s", err);
end:
    tly_pipeline_close(p);
    tly_store_close(store);
}

/* A reader in another process, looping over read transactions while the
 * writer applies batches, must always see the counter in meta agree with the
 * state: both are written in the same transaction. */
static void test_reader_sees_consistent_state(void)
{
    const char *dir = tly_test_dir();
    char db_path[256], err[256], lines[200][200];
    const char *batch[201];
    tly_store *store = NULL;
    tly_pipeline *p = NULL;
    pid_t child = -1;
    int pipefd[2] = {-1, -1}, status = 0;

    snprintf(db_path, sizeof(db_path), "%s/concurrent.db", dir);
    CHECK_MSG(tly_store_open(db_path, NULL, &store, err, sizeof(err)) == 0, "%s", err);
    CHECK_MSG(tly_pipeline_open(store, "orders", NULL, 0, &p, err, sizeof(err)) == 0, "%s", err);
    CHECK(pipe(pipefd) == 0);
    child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        /* reader: exit 0 if it saw progress and never an inconsistency */
        sqlite3 *db = NULL;
        sqlite3_stmt *stmt = NULL;
        int64_t last = 0, reads = 0, distinct = 0;
        char go;
        close(pipefd[1]);
        if (read(pipefd[0], &go, 1) != 1)
            _exit(3);
        if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK ||
            sqlite3_prepare_v2(
                db,
                "SELECT (SELECT coalesce(sum(count), 0) FROM order_window_state),"
                " (SELECT coalesce(max(value), 0) FROM meta WHERE key = 'pipeline.orders.events_applied'),"
                " (SELECT count(*) FROM changelog)",
                -1, &stmt, NULL) != SQLITE_OK)
            _exit(4);
        sqlite3_busy_timeout(db, 5000);
        while (last < 200 * 50) {
            if (sqlite3_step(stmt) != SQLITE_ROW)
                _exit(5);
            int64_t counted = sqlite3_column_int64(stmt, 0),
                    applied = sqlite3_column_int64(stmt, 1);
            if (counted != applied || counted % 200 != 0) {
                fprintf(stderr, "reader saw sum(count)=%lld events_applied=%lld\n",
                        (long long)counted, (long long)applied);
                _exit(6);
            }
            if (counted != last)
                distinct++;
            last = counted;
            reads++;
            sqlite3_reset(stmt);
        }
        sqlite3_finalize(stmt);
        sqlite3_close(db);
        _exit(distinct >= 3 ? 0 : 7);
    }
    close(pipefd[0]);
    pipefd[0] = -1;
    CHECK(write(pipefd[1], "g", 1) == 1);
    for (int b = 0; b < 50; b++) {
        for (int i = 0; i < 200; i++) {
            snprintf(
                lines[i], sizeof(lines[i]),
                "{\"orderId\":\"o%d-%d\",\"productId\":\"p%d\",\"storeId\":\"s%d\",\"price\":\"1.10\",\"qty\":1,\"ts\":%lld}",
                b, i, i % 17, i % 5, 1700000000000LL + b * 1000LL);
            batch[i] = lines[i];
        }
        batch[200] = NULL;
        CHECK(tly_store_begin(store, err, sizeof(err)) == 0);
        CHECK(apply(p, batch, NULL, NULL) == 0);
        CHECK(tly_store_commit(store, err, sizeof(err)) == 0);
        usleep(2000);
    }
    CHECK(waitpid(child, &status, 0) == child);
    child = -1;
    CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0, "reader exit status %d",
              WEXITSTATUS(status));
end:
    if (child > 0) {
        kill(child, 9);
        waitpid(child, NULL, 0);
    }
    if (pipefd[0] >= 0)
        close(pipefd[0]);
    if (pipefd[1] >= 0)
        close(pipefd[1]);
    tly_pipeline_close(p);
    tly_store_close(store);
}

struct emitted {
    int count;
    char keys[8][128];
    char values[8][512];
};

static int collect_emit(void *ctx, const char *key, size_t key_len, const char *value,
                        size_t value_len)
{
    struct emitted *e = ctx;
    if (e->count == 8)
        return 1;
    snprintf(e->keys[e->count], sizeof(e->keys[0]), "%.*s", (int)key_len, key);
    snprintf(e->values[e->count], sizeof(e->values[0]), "%.*s", (int)value_len, value);
    e->count++;
    return 0;
}

/* @emit: one output record per window a batch changed; @flush: one per
 * vehicle pending. */
static void test_emit_outputs(void)
{
    tly_store *store = open_store("emit.db");
    tly_pipeline *orders = NULL, *telemetry = NULL;
    struct emitted e = {0};
    char err[256];
    int64_t before, after;
    const char *batch[] = {
        "{\"orderId\":\"1\",\"productId\":\"p1\",\"storeId\":\"s1\",\"price\":83.71,\"qty\":3,\"ts\":1700000000000}",
        "{\"orderId\":\"2\",\"productId\":\"p1\",\"storeId\":\"s1\",\"price\":\"0.50\",\"qty\":1,\"ts\":1700000001000}",
        NULL};
    const char *readings[] = {
        "{\"data\":{\"id\":\"V9\",\"speed\":12.50},\"received_at\":5,\"produced_at\":4}",
        "{\"data\":{\"id\":\"V9\",\"door\":\"open\"},\"received_at\":6,\"produced_at\":5}", NULL};

    CHECK(store);
    CHECK_MSG(tly_pipeline_open(store, "orders", NULL, 0, &orders, err, sizeof(err)) == 0, "%s",
              err);
    CHECK_MSG(tly_pipeline_open(store, "telemetry", NULL, 0, &telemetry, err, sizeof(err)) == 0,
              "%s", err);
    before = tly_store_last_seq(store);
    CHECK(apply(orders, batch, NULL, NULL) == 0);
    after = tly_store_last_seq(store);
    CHECK_MSG(tly_pipeline_emit(orders, before, after, collect_emit, &e, err, sizeof(err)) == 0,
              "%s", err);
    CHECK_INT(e.count, 1);
    CHECK_STR(e.keys[0], "s1#p1#1699999980000");
    CHECK_STR(
        e.values[0],
        "{\"storeId\":\"s1\",\"productId\":\"p1\",\"windowStart\":1699999980000,\"sum\":251.63,\"count\":2}");
    /* nothing changed in an empty range */
    memset(&e, 0, sizeof(e));
    CHECK(tly_pipeline_emit(orders, after, after, collect_emit, &e, err, sizeof(err)) == 0);
    CHECK_INT(e.count, 0);
    /* telemetry: the full record of the vehicle, once, from its pending set */
    before = after;
    CHECK(apply(telemetry, readings, NULL, NULL) == 0);
    after = tly_store_last_seq(store);
    {
        /* produced_at is the emit time: between these two clock readings */
        struct timespec ts;
        long long t0, t1, at = -1;
        char rest[256];
        clock_gettime(CLOCK_REALTIME, &ts);
        t0 = (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
        CHECK(tly_pipeline_flush(telemetry, after, collect_emit, &e, err, sizeof(err)) == 0);
        clock_gettime(CLOCK_REALTIME, &ts);
        t1 = (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
        CHECK_INT(e.count, 1);
        CHECK_STR(e.keys[0], "V9");
        CHECK_MSG(
            sscanf(e.values[0],
                   "{\"data\":{\"id\":\"V9\",\"door\":\"open\",\"speed\":12.50},\"received_at\":6,"
                   "\"produced_at\":%lld%255s",
                   &at, rest) == 2 &&
                strcmp(rest, "}") == 0,
            "%s", e.values[0]);
        CHECK_MSG(at >= t0 && at <= t1, "produced_at %lld not in [%lld, %lld]", at, t0, t1);
    }
    /* the orders pipeline emits nothing for telemetry's changes */
    memset(&e, 0, sizeof(e));
    CHECK(tly_pipeline_emit(orders, before, after, collect_emit, &e, err, sizeof(err)) == 0);
    CHECK_INT(e.count, 0);
end:
    tly_pipeline_close(orders);
    tly_pipeline_close(telemetry);
    tly_store_close(store);
}

/* The outputs orders' @merge RETURNs for a batch are the records its @emit
 * finds for the same changes: with a batch that went one event at a time (an
 * event whose sum overflows is rejected by the database), once per window,
 * the last; nothing for the rejected event's window. */
static void test_merge_outputs_match_emit(void)
{
    tly_store *store = open_store("merge_outputs.db");
    tly_pipeline *orders = NULL;
    struct emitted fast = {0}, slow = {0};
    tly_event_result results[4];
    tly_batch_stats stats;
    char err[256];
    int64_t before, after;
    const char *batch[] = {
        "{\"orderId\":\"1\",\"productId\":\"p1\",\"storeId\":\"s1\",\"price\":\"2.25\",\"qty\":2,\"ts\":1700000000000}",
        "{\"orderId\":\"2\",\"productId\":\"p9\",\"storeId\":\"s9\",\"price\":\"1.00\",\"qty\":1,\"ts\":1700000000000}",
        "{\"orderId\":\"3\",\"productId\":\"p1\",\"storeId\":\"s1\",\"price\":\"0.75\",\"qty\":1,\"ts\":1700000001000}",
        "{\"orderId\":\"4\",\"productId\":\"p2\",\"storeId\":\"s1\",\"price\":\"0.001\",\"qty\":3,\"ts\":1700000001000}",
        NULL};
    const char *none[] = {NULL};

    CHECK(store);
    CHECK_MSG(tly_pipeline_open(store, "orders", NULL, 0, &orders, err, sizeof(err)) == 0, "%s",
              err);
    /* a window one order away from overflowing its sum */
    CHECK_MSG(tly_store_exec(store,
                             "INSERT INTO order_window_state VALUES "
                             "('s9', 'p9', 1699999980000, 9223372036854000000, 1, 1, 0)",
                             err, sizeof(err)) == 0,
              "%s", err);
    before = tly_store_last_seq(store);
    CHECK(apply(orders, batch, results, &stats) == 0);
    after = tly_store_last_seq(store);
    CHECK_INT(results[1].status, TLY_EVENT_REJECTED);
    CHECK_MSG(strstr(results[1].reason, "rejected by the database") != NULL, "%s",
              results[1].reason);
    CHECK_INT(stats.applied, 3);
    CHECK_MSG(tly_pipeline_emit(orders, before, after, collect_emit, &fast, err, sizeof(err)) == 0,
              "%s", err);
    /* another (empty) apply: the same range now goes through @emit */
    CHECK(apply(orders, none, NULL, NULL) == 0);
    CHECK_MSG(tly_pipeline_emit(orders, before, after, collect_emit, &slow, err, sizeof(err)) == 0,
              "%s", err);
    CHECK_INT(fast.count, 2);
    CHECK_INT(slow.count, 2);
    for (int i = 0; i < 2; i++) {
        int j = strcmp(fast.keys[i], slow.keys[0]) == 0 ? 0 : 1;
        CHECK_STR(fast.keys[i], slow.keys[j]);
        CHECK_STR(fast.values[i], slow.values[j]);
    }
    CHECK_STR(fast.keys[0], "s1#p1#1699999980000");
    CHECK_STR(fast.values[0], "{\"storeId\":\"s1\",\"productId\":\"p1\","
                              "\"windowStart\":1699999980000,\"sum\":5.25,\"count\":2}");
    CHECK_STR(fast.values[1], "{\"storeId\":\"s1\",\"productId\":\"p2\","
                              "\"windowStart\":1699999980000,\"sum\":0.003,\"count\":1}");
end:
    tly_pipeline_close(orders);
    tly_store_close(store);
}

/* Telemetry's pending set: what a flush read and then forgot stays forgotten,
 * what changed after the read stays pending, a reading that lost to a newer
 * one makes nothing pending; with windows, only closed windows flush and a
 * reading for a closed window is late. */
static void test_flush_and_windows(void)
{
    tly_store *store = open_store("flush.db");
    tly_pipeline *p = NULL;
    struct emitted e = {0};
    tly_event_result results[8];
    tly_batch_stats stats;
    char err[256];
    int64_t read_at;
    const char *settings[] = {"window_ms=1000", NULL};
    const char *first[] = {"{\"data\":{\"id\":\"A\",\"speed\":1},\"received_at\":100}",
                           "{\"data\":{\"id\":\"B\",\"speed\":2},\"received_at\":200}", NULL};
    const char *again[] = {"{\"data\":{\"id\":\"A\",\"speed\":3},\"received_at\":300}", NULL};
    const char *stale[] = {"{\"data\":{\"id\":\"B\",\"speed\":9},\"received_at\":150}", NULL};
    /* windows of 1 s, lateness 500 ms: 2600 closes [0,1000) and [1000,2000) */
    const char *later[] = {"{\"data\":{\"id\":\"C\",\"speed\":4},\"received_at\":1200}",
                           "{\"data\":{\"id\":\"D\",\"speed\":5},\"received_at\":2600}", NULL};
    const char *late[] = {"{\"data\":{\"id\":\"A\",\"speed\":6},\"received_at\":1999}",
                          "{\"data\":{\"id\":\"E\",\"speed\":7},\"received_at\":2000}", NULL};

    CHECK(store);
    CHECK_MSG(tly_pipeline_open(store, "telemetry", settings, 0, &p, err, sizeof(err)) == 0, "%s",
              err);
    CHECK(tly_pipeline_has_flush(p));
    CHECK(apply(p, first, NULL, NULL) == 0);
    CHECK_INT(query_int(store, "SELECT count(*) FROM vehicle_pending"), 2);
    /* without event-time windows, one row per vehicle, whatever its times */
    CHECK_INT(query_int(store, "SELECT count(*) FROM vehicle_pending WHERE window_start_ms <> 0"),
              0);
    read_at = tly_store_last_seq(store);
    CHECK(tly_pipeline_flush(p, read_at, collect_emit, &e, err, sizeof(err)) == 0);
    CHECK_INT(e.count, 2);
    CHECK_STR(e.keys[0], "A");
    CHECK_STR(e.keys[1], "B");
    /* A changes after the read: the flush's forget must leave it pending */
    CHECK(apply(p, again, NULL, NULL) == 0);
    CHECK(tly_pipeline_flushed(p, read_at, err, sizeof(err)) == 0);
    CHECK_INT(query_int(store, "SELECT count(*) FROM vehicle_pending"), 1);
    memset(&e, 0, sizeof(e));
    CHECK(tly_pipeline_flush(p, tly_store_last_seq(store), collect_emit, &e, err, sizeof(err)) ==
          0);
    CHECK_INT(e.count, 1);
    CHECK_STR(e.keys[0], "A");
    CHECK(tly_pipeline_flushed(p, tly_store_last_seq(store), err, sizeof(err)) == 0);
    CHECK_INT(query_int(store, "SELECT count(*) FROM vehicle_pending"), 0);
    /* an older reading changes nothing and makes nothing pending */
    CHECK(apply(p, stale, results, &stats) == 0);
    CHECK_INT(stats.applied, 1);
    CHECK_INT(query_int(store, "SELECT count(*) FROM vehicle_pending"), 0);

    /* event-time windows, 500 ms of lateness */
    CHECK(tly_pipeline_set_windowed(p, true, 500, err, sizeof(err)) == 0);
    CHECK(apply(p, later, results, &stats) == 0);
    CHECK_INT(stats.applied, 2);
    CHECK_INT(stats.late, 0);
    memset(&e, 0, sizeof(e));
    CHECK(tly_pipeline_flush(p, tly_store_last_seq(store), collect_emit, &e, err, sizeof(err)) ==
          0);
    /* [1000,2000) closed (2600 - 500 >= 2000): C; D's window [2000,3000) is open */
    CHECK_INT(e.count, 1);
    CHECK_STR(e.keys[0], "C");
    CHECK(tly_pipeline_flushed(p, tly_store_last_seq(store), err, sizeof(err)) == 0);
    CHECK_INT(query_int(store, "SELECT count(*) FROM vehicle_pending"), 1);
    /* 1999 is in the closed window: late; 2000 is in the open one */
    CHECK(apply(p, late, results, &stats) == 0);
    CHECK_INT(stats.late, 1);
    CHECK_INT(stats.applied, 1);
    CHECK_INT(results[0].status, TLY_EVENT_LATE);
    CHECK_MSG(strncmp(results[0].reason, "late: received_at 1999 belongs to window [1000, 2000)",
                      53) == 0,
              "%s", results[0].reason);
    CHECK_INT(results[1].status, TLY_EVENT_APPLIED);
    CHECK_INT(query_int(store, "SELECT count(*) FROM vehicle_pending"),
              2); /* D and E in [2000,3000) */
    /* lateness is judged event by event: 3700 closes [2000,3000) for the
     * reading after it in the same batch, not for the one before it */
    {
        const char *mixed[] = {"{\"data\":{\"id\":\"F\",\"speed\":1},\"received_at\":2100}",
                               "{\"data\":{\"id\":\"G\",\"speed\":1},\"received_at\":3700}",
                               "{\"data\":{\"id\":\"H\",\"speed\":1},\"received_at\":2900}", NULL};
        CHECK(apply(p, mixed, results, &stats) == 0);
        CHECK_INT(results[0].status, TLY_EVENT_APPLIED);
        CHECK_INT(results[1].status, TLY_EVENT_APPLIED);
        CHECK_INT(results[2].status, TLY_EVENT_LATE);
        CHECK_INT(query_int(store, "SELECT max_event_ms FROM event_clock"), 3700);
        CHECK_INT(query_int(store, "SELECT count(*) FROM vehicle_pending"), 4);
    }
    /* the late reading changed nothing */
    {
        sqlite3_stmt *stmt = NULL;
        CHECK(sqlite3_prepare_v2(tly_store_db(store),
                                 "SELECT value FROM vehicle_sensor_state WHERE vin = 'A'", -1,
                                 &stmt, NULL) == SQLITE_OK);
        CHECK(sqlite3_step(stmt) == SQLITE_ROW);
        CHECK_STR((const char *)sqlite3_column_text(stmt, 0), "3");
        sqlite3_finalize(stmt);
    }
    /* without windows again, everything pending flushes */
    CHECK(tly_pipeline_set_windowed(p, false, 0, err, sizeof(err)) == 0);
    memset(&e, 0, sizeof(e));
    CHECK(tly_pipeline_flush(p, tly_store_last_seq(store), collect_emit, &e, err, sizeof(err)) ==
          0);
    CHECK_INT(e.count, 4);
end:
    tly_pipeline_close(p);
    tly_store_close(store);
}

static const tly_testcase cases[] = {
    {"orders_money_is_exact", test_orders_money_is_exact},
    {"merge_outputs_match_emit", test_merge_outputs_match_emit},
    {"flush_and_windows", test_flush_and_windows},
    {"orders_windows", test_orders_windows},
    {"orders_coalesce_per_batch", test_orders_coalesce_per_batch},
    {"orders_malformed", test_orders_malformed},
    {"telemetry_latest_wins", test_telemetry_latest_wins},
    {"telemetry_partition_moves", test_telemetry_partition_moves},
    {"user_pipeline_and_isolation", test_user_pipeline_and_isolation},
    {"bad_pipeline_files", test_bad_pipeline_files},
    {"reader_sees_consistent_state", test_reader_sees_consistent_state},
    {"emit_outputs", test_emit_outputs},
    {NULL, NULL}};

int main(int argc, char **argv)
{
    return tly_test_main(argc, argv, cases);
}
