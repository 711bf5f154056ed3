/* tests/unit/test_changelog.c - export, replay into a new database, replay
 * twice, gaps, damaged exports. */
#include "tly_test.h"

#include "changelog.h"
#include "pipeline.h"
#include "store.h"

#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct fixture {
    char dir[64];
    char source[256], target[256], export_path[256];
};

static void fixture_init(struct fixture *fx)
{
    snprintf(fx->dir, sizeof(fx->dir), "%s", tly_test_dir());
    snprintf(fx->source, sizeof(fx->source), "%s/source.db", fx->dir);
    snprintf(fx->target, sizeof(fx->target), "%s/target.db", fx->dir);
    snprintf(fx->export_path, sizeof(fx->export_path), "%s/export.jsonl", fx->dir);
}

/* Fills the source with both pipelines over several batches, so keys change
 * more than once and key_seq climbs. */
static int build_source(const char *path)
{
    char err[256], line[4][512];
    tly_store *store = NULL;
    tly_pipeline *orders = NULL, *telemetry = NULL;
    int rc = -1;

    if (tly_store_open(path, NULL, &store, err, sizeof(err)) < 0 ||
        tly_pipeline_open(store, "orders", NULL, 0, &orders, err, sizeof(err)) < 0 ||
        tly_pipeline_open(store, "telemetry", NULL, 0, &telemetry, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s\n", err);
        goto done;
    }
    for (int b = 0; b < 30; b++) {
        tly_event events[4] = {{0}};
        tly_event_result results[4];
        snprintf(
            line[0], sizeof(line[0]),
            "{\"orderId\":\"o%d\",\"productId\":\"p%d\",\"storeId\":\"s%d\",\"price\":\"%d.%02d\",\"qty\":%d,\"ts\":%lld}",
            b, b % 3, b % 2, b, b % 100, b % 4 + 1, 1700000000000LL + b * 7000LL);
        snprintf(
            line[1], sizeof(line[1]),
            "{\"orderId\":\"q%d\",\"productId\":\"p%d\",\"storeId\":7,\"price\":%d.5,\"qty\":1,\"normTs\":%lld,\"ts\":\"x\"}",
            b, b % 5, b, 1700000000000LL + b * 3000LL);
        snprintf(
            line[2], sizeof(line[2]),
            "{\"data\":{\"id\":\"VIN%d\",\"speed\":%d.25,\"label\":\"caf\\u00e9 \\\"%d\\\" /x\",\"ok\":%s},\"received_at\":%d,\"produced_at\":%d}",
            b % 4, b, b, b % 2 ? "true" : "null", 1000 + (b * 37) % 50, 900 + b);
        snprintf(line[3], sizeof(line[3]),
                 "{\"data\":{\"id\":\"VIN%d\",\"pos\":[%d,-%d.125]},\"received_at\":%d}", b % 3, b,
                 b, 2000 + b);
        for (int i = 0; i < 4; i++) {
            events[i].data = line[i];
            events[i].len = strlen(line[i]);
        }
        if (tly_store_begin(store, err, sizeof(err)) < 0 ||
            tly_pipeline_apply(orders, events, 2, results, NULL, err, sizeof(err)) < 0 ||
            tly_pipeline_apply(telemetry, events + 2, 2, results + 2, NULL, err, sizeof(err)) < 0 ||
            tly_store_commit(store, err, sizeof(err)) < 0) {
            fprintf(stderr, "%s\n", err);
            goto done;
        }
        for (int i = 0; i < 4; i++)
            if (results[i].status != TLY_EVENT_APPLIED) {
                fprintf(stderr, "event %d of batch %d: %s\n", i, b, results[i].reason);
                goto done;
            }
    }
    rc = 0;
done:
    tly_pipeline_close(orders);
    tly_pipeline_close(telemetry);
    tly_store_close(store);
    return rc;
}

/* Rows in one database and not the other, both ways, over every column. */
static int64_t differences(const char *a, const char *b)
{
    return tly_test_scalar(
        a, b,
        "SELECT (SELECT count(*) FROM (SELECT * FROM main.order_window_state EXCEPT SELECT * FROM other.order_window_state))"
        " + (SELECT count(*) FROM (SELECT * FROM other.order_window_state EXCEPT SELECT * FROM main.order_window_state))"
        " + (SELECT count(*) FROM (SELECT * FROM main.vehicle_sensor_state EXCEPT SELECT * FROM other.vehicle_sensor_state))"
        " + (SELECT count(*) FROM (SELECT * FROM other.vehicle_sensor_state EXCEPT SELECT * FROM main.vehicle_sensor_state))"
        " + (SELECT count(*) FROM (SELECT seq, entity, key, key_seq, image, delta, changed_ms FROM main.changelog EXCEPT SELECT seq, entity, key, key_seq, image, delta, changed_ms FROM other.changelog))"
        " + (SELECT count(*) FROM (SELECT seq, entity, key, key_seq, image, delta, changed_ms FROM other.changelog EXCEPT SELECT seq, entity, key, key_seq, image, delta, changed_ms FROM main.changelog))"
        " + (SELECT count(*) FROM (SELECT * FROM main.order_windows EXCEPT SELECT * FROM other.order_windows))"
        " + (SELECT count(*) FROM (SELECT * FROM main.vehicle_latest EXCEPT SELECT * FROM other.vehicle_latest))");
}

static int export_to(const char *db, int64_t since, const char *path, int64_t *rows)
{
    char err[256];
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    *rows = tly_changelog_export(db, since, f, NULL, NULL, err, sizeof(err));
    fclose(f);
    if (*rows < 0)
        fprintf(stderr, "export: %s\n", err);
    return *rows < 0 ? -1 : 0;
}

/* Replays every line of path; counts changed rows and gaps. */
static int replay_file(const char *db, const char *path, int64_t *changed, int64_t *gaps, char *err,
                       size_t errlen)
{
    tly_replayer *r = NULL;
    FILE *f = fopen(path, "r");
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int rc = -1;

    *changed = *gaps = 0;
    if (!f || tly_replayer_open(db, NULL, &r, err, errlen) < 0 ||
        tly_store_begin(tly_replayer_store(r), err, errlen) < 0)
        goto done;
    while ((len = getline(&line, &cap, f)) > 0) {
        tly_replay_outcome out;
        if (line[len - 1] == '\n')
            line[--len] = '\0';
        if (tly_replayer_apply_line(r, line, (size_t)len, &out, err, errlen) < 0)
            goto done;
        *changed += out.changed;
        *gaps += out.gap_from != 0;
    }
    if (tly_store_commit(tly_replayer_store(r), err, errlen) < 0)
        goto done;
    rc = 0;
done:
    if (r && rc < 0)
        tly_store_rollback(tly_replayer_store(r));
    tly_replayer_close(r);
    free(line);
    if (f)
        fclose(f);
    return rc;
}

static void test_export_replay_roundtrip(void)
{
    struct fixture fx;
    int64_t rows, changed, gaps, total;
    char err[256];

    fixture_init(&fx);
    CHECK(build_source(fx.source) == 0);
    total = tly_test_scalar(fx.source, NULL, "SELECT count(*) FROM changelog");
    CHECK(total > 60);
    CHECK(tly_test_scalar(fx.source, NULL, "SELECT max(key_seq) FROM order_window_state") > 1);
    CHECK(export_to(fx.source, 0, fx.export_path, &rows) == 0);
    CHECK_INT(rows, total);
    CHECK_MSG(replay_file(fx.target, fx.export_path, &changed, &gaps, err, sizeof(err)) == 0, "%s",
              err);
    CHECK_INT(gaps, 0);
    CHECK(changed > 0 && changed <= total);
    CHECK_INT(differences(fx.source, fx.target), 0);
    CHECK(tly_test_scalar(fx.target, NULL, "SELECT count(*) FROM vehicle_latest") == 4);
    /* Twice: nothing changes. */
    CHECK_MSG(replay_file(fx.target, fx.export_path, &changed, &gaps, err, sizeof(err)) == 0, "%s",
              err);
    CHECK_INT(changed, 0);
    CHECK_INT(gaps, 0);
    CHECK_INT(differences(fx.source, fx.target), 0);
    /* The target's own export is the same export. */
    {
        char again[300];
        int64_t rows_again;
        snprintf(again, sizeof(again), "%s/again.jsonl", fx.dir);
        CHECK(export_to(fx.target, 0, again, &rows_again) == 0);
        CHECK_INT(rows_again, rows);
    }
    /* A real difference is detected by the comparison itself. */
    CHECK_INT(
        tly_test_scalar(
            fx.target, NULL,
            "UPDATE order_window_state SET count = count + 1 WHERE product_id = 'p0' AND store_id = 's0' RETURNING 1"),
        1);
    CHECK(differences(fx.source, fx.target) > 0);
end:;
}

static void test_since_and_gaps(void)
{
    struct fixture fx;
    int64_t rows, changed, gaps, total, since = 10;
    char err[256], tail_path[300], holed_path[300];

    fixture_init(&fx);
    CHECK(build_source(fx.source) == 0);
    total = tly_test_scalar(fx.source, NULL, "SELECT count(*) FROM changelog");
    snprintf(tail_path, sizeof(tail_path), "%s/tail.jsonl", fx.dir);
    CHECK(export_to(fx.source, since, tail_path, &rows) == 0);
    CHECK_INT(rows, total - since);
    /* Into an empty database, an export that starts at seq 11 is a gap. */
    CHECK_MSG(replay_file(fx.target, tail_path, &changed, &gaps, err, sizeof(err)) == 0, "%s", err);
    CHECK_INT(gaps, 1);

    /* A hole in the middle of an export is a gap too. */
    {
        FILE *in = fopen(fx.export_path, "w");
        char *line = NULL;
        size_t cap = 0;
        int n = 0;
        FILE *out;
        char target2[300];
        CHECK(in);
        fclose(in);
        CHECK(export_to(fx.source, 0, fx.export_path, &rows) == 0);
        snprintf(holed_path, sizeof(holed_path), "%s/holed.jsonl", fx.dir);
        in = fopen(fx.export_path, "r");
        out = fopen(holed_path, "w");
        CHECK(in && out);
        while (getline(&line, &cap, in) > 0)
            if (++n != 20)
                fputs(line, out);
        free(line);
        fclose(in);
        fclose(out);
        snprintf(target2, sizeof(target2), "%s/target2.db", fx.dir);
        CHECK_MSG(replay_file(target2, holed_path, &changed, &gaps, err, sizeof(err)) == 0, "%s",
                  err);
        CHECK_INT(gaps, 1);
    }
end:;
}

static void test_damaged_lines(void)
{
    struct fixture fx;
    tly_replayer *r = NULL;
    tly_replay_outcome out;
    char err[256] = "";
    const char *bad[] = {
        "garbage", "{\"seq\":1,\"entity\":\"order_window\"}",
        "{\"seq\":1,\"entity\":\"spaceships\",\"key\":\"k\",\"key_seq\":1,\"image\":{},\"changed_ms\":0}",
        "{\"seq\":0,\"entity\":\"order_window\",\"key\":\"k\",\"key_seq\":1,\"image\":{},\"changed_ms\":0}",
        "{\"seq\":1,\"entity\":\"order_window\",\"key\":\"k\",\"key_seq\":1,\"image\":{\"store_id\":\"s\"},\"changed_ms\":0}",
        /* what the fast reader passes on to json-c, which says why */
        "{\"seq\":1,\"entity\":\"order_window\",\"key\":\"k\xff\",\"key_seq\":1,\"image\":{},\"changed_ms\":0}",
        "{\"seq\":1,\"entity\":\"order_window\",\"key\":\"k\",\"key_seq\":1,\"image\":{\"a\":01},\"changed_ms\":0}",
        "{\"seq\":1,\"entity\":\"order_window\",\"key\":\"k\",\"key_seq\":1.5,\"image\":{},\"changed_ms\":0}",
        "{\"seq\":1,\"entity\":\"order_window\",\"key\":\"k\",\"key_seq\":1,\"image\":[],\"changed_ms\":0}",
        "{\"seq\":1,\"entity\":\"order_window\",\"key\":\"k\",\"key_seq\":1,\"image\":{\"a\":[1,]},\"changed_ms\":0}",
        NULL};
    const char *why[] = {"not JSON",
                         "not a changelog row",
                         "unknown entity",
                         "not a changelog row",
                         "NOT NULL",
                         "not JSON",
                         "not JSON",
                         "not a changelog row",
                         "not a changelog row",
                         "not JSON"};

    fixture_init(&fx);
    CHECK_MSG(tly_replayer_open(fx.target, NULL, &r, err, sizeof(err)) == 0, "%s", err);
    for (int i = 0; bad[i]; i++) {
        err[0] = '\0';
        CHECK_MSG(tly_replayer_apply_line(r, bad[i], strlen(bad[i]), &out, err, sizeof(err)) < 0,
                  "accepted %s", bad[i]);
        CHECK_MSG(strstr(err, why[i]) != NULL, "line %d: %s", i, err);
        CHECK_MSG(out.bad_line == 1, "line %d not reported as a bad line", i);
    }
    /* nothing was written */
    CHECK_INT(tly_replayer_last_seq(r), 0);
end:
    tly_replayer_close(r);
}

/* seq and key_seq out of 1..TLY_CHANGELOG_MAX_SEQ, or not integers: bad
 * lines, whichever reader sees them, and nothing moves - before, 2^63-1
 * overflowed the seq after it. The bounds themselves are accepted. */
static void test_seq_range(void)
{
    struct fixture fx;
    tly_replayer *r = NULL;
    tly_replay_outcome out;
    char err[256] = "", line[512];
    static const char *const row =
        "{\"seq\":%s,\"entity\":\"order_window\",\"key\":\"s1#p1#0\",\"key_seq\":%s,"
        "\"image\":{\"store_id\":\"s1\",\"product_id\":\"p1\",\"window_start_ms\":0,"
        "\"sum_micros\":5,\"count\":1},\"delta\":null,\"changed_ms\":1,\"part\":0}";
    const char *bad[][3] = {
        {"9223372036854775807", "1",
         "seq must be an integer from 1 to 4611686018427387903, not "
         "9223372036854775807"},
        {"9223372036854775808", "1", "seq must be an integer"},
        {"99999999999999999999999", "1", "seq must be an integer"},
        {"4611686018427387904", "1", "seq must be an integer"},
        {"-3", "1", "seq must be an integer from 1 to 4611686018427387903, not -3"},
        {"-9223372036854775808", "1", "seq must be an integer"},
        {"0", "1", "seq must be an integer"},
        {"2.0", "1", "seq must be an integer"},
        {"1e3", "1", "seq must be an integer"},
        {"\"7\"", "1", "seq must be an integer"},
        {"null", "1", "seq must be an integer"},
        {"1", "9223372036854775807", "key_seq must be an integer from 1 to"},
        {"1", "4611686018427387904", "key_seq must be an integer"},
        {"1", "-1", "key_seq must be an integer"},
        {"1", "0", "key_seq must be an integer"},
        {"1", "1.5", "key_seq must be an integer"},
        {"1", "[1]", "key_seq must be an integer"},
    };

    fixture_init(&fx);
    CHECK_MSG(tly_replayer_open(fx.target, NULL, &r, err, sizeof(err)) == 0, "%s", err);
    CHECK(tly_store_begin(tly_replayer_store(r), err, sizeof(err)) == 0);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(line, sizeof(line), row, bad[i][0], bad[i][1]);
        err[0] = '\0';
        CHECK_MSG(tly_replayer_apply_line(r, line, strlen(line), &out, err, sizeof(err)) < 0,
                  "accepted seq %s key_seq %s", bad[i][0], bad[i][1]);
        CHECK_MSG(strstr(err, bad[i][2]) != NULL, "seq %s key_seq %s: %s", bad[i][0], bad[i][1],
                  err);
        CHECK_MSG(out.bad_line == 1, "seq %s key_seq %s: not a bad line", bad[i][0], bad[i][1]);
        CHECK_INT(tly_replayer_last_seq(r), 0);
    }
    CHECK_INT(tly_store_query_int(tly_store_db(tly_replayer_store(r)),
                                  "SELECT count(*) FROM order_window_state", -1),
              0);
    /* the largest seq and key_seq are rows (a gap, here) */
    snprintf(line, sizeof(line), row, "4611686018427387903", "4611686018427387903");
    CHECK_MSG(tly_replayer_apply_line(r, line, strlen(line), &out, err, sizeof(err)) == 0, "%s",
              err);
    CHECK_INT(out.changed, 1);
    CHECK_INT(out.gap_from, 1);
    CHECK_INT(tly_replayer_last_seq(r), TLY_CHANGELOG_MAX_SEQ);
    CHECK_INT(tly_store_query_int(tly_store_db(tly_replayer_store(r)),
                                  "SELECT key_seq FROM order_window_state", -1),
              TLY_CHANGELOG_MAX_SEQ);
    CHECK(tly_store_commit(tly_replayer_store(r), err, sizeof(err)) == 0);
end:
    if (r)
        tly_store_rollback(tly_replayer_store(r));
    tly_replayer_close(r);
}

/* What a daemon batch records besides its rows: the counters row of each
 * input partition it read, and (after the Kafka commit) the input positions
 * in meta. Partition p gets offsets [first, first + n) of batch b. */
static int daemon_batch(tly_store *store, tly_pipeline *orders, int b, char *err, size_t errlen)
{
    char line[3][256];
    tly_event events[3];
    tly_event_result results[3];

    for (int p = 0; p < 3; p++) {
        snprintf(
            line[p], sizeof(line[p]),
            "{\"orderId\":\"o%d-%d\",\"productId\":\"p%d\",\"storeId\":\"s%d\",\"price\":\"1.50\","
            "\"qty\":1,\"ts\":%lld}",
            b, p, b % 2, p, 1700000000000LL + b * 1000LL);
        events[p].data = line[p];
        events[p].len = strlen(line[p]);
        events[p].partition = p;
    }
    if (tly_store_begin(store, err, errlen) < 0 ||
        tly_pipeline_apply(orders, events, 3, results, NULL, err, errlen) < 0)
        return -1;
    for (int p = 0; p < 3; p++) {
        char key[64];
        /* partition p's offsets: 10 * b .. 10 * b + p (one event, others filtered) */
        int64_t first = 10LL * b + p, end = first + 1;
        snprintf(key, sizeof(key), "kafka.input.in.%d", p);
        if (tly_changelog_record_counters(store, "orders", p, "in", first, end, "i1", err, errlen) <
                0 ||
            tly_store_meta_set_int(store, key, end) < 0)
            return -1;
    }
    return tly_store_commit(store, err, errlen);
}

/* A database restored from a snapshot older than the changelog's end and
 * caught up by replaying the changelog after it ends with the input positions
 * and counters of the last batch replayed, as if it had run those batches:
 * not with the snapshot's positions. Counters rows of another pipeline or
 * another input topic move no position; replaying older rows again moves
 * none back. */
static void test_replay_restores_positions(void)
{
    struct fixture fx;
    tly_store *store = NULL;
    tly_pipeline *orders = NULL;
    tly_replayer *r = NULL;
    FILE *f = NULL;
    char err[512] = "", snapshot[300], *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int64_t snapshot_seq = 0, rows = 0;
    const char *other =
        "{\"seq\":100000,\"entity\":\"tally.counters\",\"key\":\"pipeline.enrich.p1\",\"key_seq\":9,"
        "\"image\":{\"pipeline.enrich.p1.events_applied\":9,\"input\":[0,999999]},\"changed_ms\":1,"
        "\"part\":1}";
    /* the same pipeline reading another topic; a pipeline named "orders.p1" */
    const char *other_topic =
        "{\"seq\":100001,\"entity\":\"tally.counters\",\"key\":\"pipeline.orders.p1\",\"key_seq\":1,"
        "\"image\":{\"input\":[0,999999],\"topic\":\"elsewhere\"},\"changed_ms\":1,\"part\":1}";
    const char *other_name =
        "{\"seq\":100002,\"entity\":\"tally.counters\",\"key\":\"pipeline.orders.p1.p0\",\"key_seq\":1,"
        "\"image\":{\"input\":[0,999999]},\"changed_ms\":1,\"part\":0}";
    tly_replay_outcome out;

    fixture_init(&fx);
    snprintf(snapshot, sizeof(snapshot), "%s/snapshot.db", fx.dir);
    CHECK_MSG(tly_store_open(fx.source, NULL, &store, err, sizeof(err)) == 0, "%s", err);
    CHECK_MSG(tly_pipeline_open(store, "orders", NULL, 0, &orders, err, sizeof(err)) == 0, "%s",
              err);
    for (int b = 0; b < 20; b++) {
        if (b == 8) {
            /* the snapshot: a consistent copy after batch 7 */
            char sql[400];
            snapshot_seq = tly_store_last_seq(store);
            snprintf(sql, sizeof(sql), "VACUUM INTO '%s'", snapshot);
            CHECK_MSG(sqlite3_exec(tly_store_db(store), sql, NULL, NULL, NULL) == SQLITE_OK, "%s",
                      sqlite3_errmsg(tly_store_db(store)));
        }
        CHECK_MSG(daemon_batch(store, orders, b, err, sizeof(err)) == 0, "batch %d: %s", b, err);
    }
    tly_pipeline_close(orders);
    orders = NULL;
    tly_store_close(store);
    store = NULL;
    CHECK(export_to(fx.source, snapshot_seq, fx.export_path, &rows) == 0);
    CHECK(rows > 0);
    /* the snapshot stands at batch 7 */
    CHECK_INT(
        tly_test_scalar(snapshot, NULL, "SELECT value FROM meta WHERE key = 'kafka.input.in.2'"),
        10 * 7 + 2 + 1);

    CHECK_MSG(tly_replayer_open(snapshot, NULL, &r, err, sizeof(err)) == 0, "%s", err);
    CHECK(tly_replayer_record_positions(r, "orders", "in", "kafka.input.in.") == 0);
    CHECK_MSG(tly_store_begin(tly_replayer_store(r), err, sizeof(err)) == 0, "%s", err);
    CHECK((f = fopen(fx.export_path, "r")) != NULL);
    while ((len = getline(&line, &cap, f)) > 0)
        CHECK_MSG(tly_replayer_apply_line(r, line, (size_t)len, &out, err, sizeof(err)) == 0, "%s",
                  err);
    CHECK_MSG(tly_replayer_apply_line(r, other, strlen(other), &out, err, sizeof(err)) == 0, "%s",
              err);
    CHECK_MSG(
        tly_replayer_apply_line(r, other_topic, strlen(other_topic), &out, err, sizeof(err)) == 0,
        "%s", err);
    CHECK_MSG(tly_replayer_apply_line(r, other_name, strlen(other_name), &out, err, sizeof(err)) ==
                  0,
              "%s", err);
    /* the export once more: nothing moves back */
    rewind(f);
    while ((len = getline(&line, &cap, f)) > 0)
        CHECK_MSG(tly_replayer_apply_line(r, line, (size_t)len, &out, err, sizeof(err)) == 0, "%s",
                  err);
    CHECK_MSG(tly_store_commit(tly_replayer_store(r), err, sizeof(err)) == 0, "%s", err);
    tly_replayer_close(r);
    r = NULL;

    /* positions and counters as the source recorded them after batch 19 */
    CHECK_INT(
        tly_test_scalar(snapshot, fx.source,
                        "SELECT count(*) FROM (SELECT key, value FROM other.meta WHERE key GLOB "
                        "'kafka.input.*' OR key GLOB 'pipeline.orders.p*' EXCEPT SELECT key, "
                        "value FROM main.meta)"),
        0);
    CHECK_INT(
        tly_test_scalar(snapshot, NULL, "SELECT value FROM meta WHERE key = 'kafka.input.in.2'"),
        10 * 19 + 2 + 1);
    CHECK_INT(
        tly_test_scalar(snapshot, NULL, "SELECT value FROM meta WHERE key = 'kafka.input.in.0'"),
        10 * 19 + 1);
    /* the enrich row raised its counter only */
    CHECK_INT(tly_test_scalar(snapshot, NULL, "SELECT count(*) FROM meta WHERE value = 999999"), 0);
    CHECK_INT(
        tly_test_scalar(snapshot, NULL,
                        "SELECT value FROM meta WHERE key = 'pipeline.enrich.p1.events_applied'"),
        9);
    /* the state too; the changelogs differ by the three foreign rows only */
    CHECK_INT(differences(fx.source, snapshot), 3);
    CHECK_INT(tly_test_scalar(snapshot, NULL, "SELECT count(*) FROM changelog WHERE seq >= 100000"),
              3);
end:
    if (f)
        fclose(f);
    free(line);
    tly_replayer_close(r);
    tly_pipeline_close(orders);
    tly_store_close(store);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *text = NULL;
    long n;
    if (f && fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (text = calloc(1, (size_t)n + 1)) && fread(text, 1, (size_t)n, f) != (size_t)n) {
        free(text);
        text = NULL;
    }
    if (f)
        fclose(f);
    return text;
}

struct scanned {
    FILE *out;
    int rows;
};

static int write_scanned(void *ctx, int64_t seq, const char *key, size_t key_len, int part,
                         const char *line, size_t line_len)
{
    struct scanned *s = ctx;
    (void)seq, (void)key, (void)key_len, (void)part;
    s->rows++;
    return fwrite(line, 1, line_len, s->out) != line_len || fputc('\n', s->out) == EOF;
}

/* The daemon's scan builds each record in C; the export builds it with
 * SQLite's json_object: the same bytes, whatever the row holds (escapes,
 * control bytes, stored JSON with white space, NULLs). */
static void test_scan_lines_match_export(void)
{
    struct fixture fx;
    char err[256], scan_path[300];
    tly_store *store = NULL;
    struct scanned s = {NULL, 0};
    FILE *f = NULL;

    fixture_init(&fx);
    snprintf(scan_path, sizeof(scan_path), "%s/scan.jsonl", fx.dir);
    CHECK_MSG(tly_store_open(fx.source, NULL, &store, err, sizeof(err)) == 0, "%s", err);
    CHECK_MSG(
        tly_store_exec(
            store,
            "INSERT INTO changelog (entity, key, key_seq, image, delta, changed_ms, part) VALUES "
            "('order_window', 's1#p1#60000', 1, '{\"store_id\":\"s1\",\"sum_micros\":5}', NULL, "
            "1700000000000, 0), "
            "('e\"q', 'k\\b' || char(1) || char(9) || char(10) || char(31) || 'é', 2, "
            "'{\"a\":\"x y \\\" z\",\"b\":[1,2.50,{\"c\":null}]}', '{\"sum_micros\":-3}', 5, NULL), "
            "('spaced', 'k2', 3, ' { \"a\" : 1 ,\n \"b\" : \"p q\" } ', '[ 1, 2 ]', 6, 7)",
            err, sizeof(err)) == 0,
        "%s", err);
    CHECK((f = fopen(fx.export_path, "w")) != NULL);
    CHECK_MSG(tly_changelog_export(fx.source, 0, f, NULL, NULL, err, sizeof(err)) == 3, "%s", err);
    fclose(f);
    CHECK((s.out = fopen(scan_path, "w")) != NULL);
    CHECK_MSG(tly_changelog_scan(store, 0, 3, write_scanned, &s, err, sizeof(err)) == 0, "%s", err);
    fclose(s.out);
    s.out = NULL;
    CHECK_INT(s.rows, 3);
    {
        char *a = slurp(fx.export_path), *b = slurp(scan_path);
        bool same = a && b && strcmp(a, b) == 0;
        if (!same)
            fprintf(stderr, "export:\n%s\nscan:\n%s\n", a ? a : "?", b ? b : "?");
        free(a);
        free(b);
        CHECK(same);
    }
end:
    if (s.out)
        fclose(s.out);
    tly_store_close(store);
}

/* Replay reads the lines the daemon and the export write in one C pass and
 * hands every other spelling to json-c: both must land the same rows. */
static void test_line_spellings(void)
{
    struct fixture fx;
    tly_replayer *r = NULL;
    tly_replay_outcome out;
    sqlite3 *db = NULL;
    char err[256] = "";
#define IMAGE(s, n)                                                                                \
    "{\"store_id\":\"" s "\",\"product_id\":\"p\",\"window_start_ms\":0,\"sum_micros\":" #n        \
    ",\"count\":1}"
    const char *lines[] = {
        /* compact, as exported */
        "{\"seq\":1,\"entity\":\"order_window\",\"key\":\"a#p#0\",\"key_seq\":1,\"image\":" IMAGE(
            "a", 1) ",\"delta\":null,\"changed_ms\":7,\"part\":2}",
        /* spaces everywhere */
        " { \"seq\" : 2 , \"entity\" : \"order_window\" , \"key\" : \"b#p#0\" , \"key_seq\" : 1 , \"image\" : { \"store_id\" : \"b\" , \"product_id\" : \"p\" , \"window_start_ms\" : 0 , \"sum_micros\" : 2 , \"count\" : 1 } , \"changed_ms\" : 7 , \"part\" : 2 } ",
        /* escapes, and UTF-8 as is */
        "{\"seq\":3,\"entity\":\"order_window\",\"key\":\"\\u00e9#p#0\",\"key_seq\":1,\"image\":" IMAGE(
            "\\u00e9", 3) ",\"changed_ms\":7,\"part\":2}",
        "{\"seq\":4,\"entity\":\"order_window\",\"key\":\"\xc3\xa8#p#0\",\"key_seq\":1,\"image\":" IMAGE(
            "\xc3\xa8", 4) ",\"changed_ms\":7,\"part\":2}",
        /* no part, part null: the default partition */
        "{\"seq\":5,\"entity\":\"order_window\",\"key\":\"c#p#0\",\"key_seq\":1,\"image\":" IMAGE(
            "c", 5) ",\"changed_ms\":7}",
        "{\"seq\":6,\"entity\":\"order_window\",\"key\":\"d#p#0\",\"key_seq\":1,\"image\":" IMAGE(
            "d", 6) ",\"changed_ms\":7,\"part\":null}",
        /* a name twice: the last counts, as json-c has it */
        "{\"seq\":7,\"entity\":\"order_window\",\"key\":\"a#p#0\",\"key_seq\":1,\"image\":" IMAGE(
            "a", 70) ",\"changed_ms\":7,\"part\":2,\"key_seq\":3}",
        /* older than what the key holds: no change */
        "{\"seq\":8,\"entity\":\"order_window\",\"key\":\"a#p#0\",\"key_seq\":2,\"image\":" IMAGE(
            "a", 80) ",\"changed_ms\":7,\"part\":2,\"extra\":[true,false,null,-1.5e3,{}]}",
        NULL};
#undef IMAGE
    const int changed[] = {1, 1, 1, 1, 1, 1, 1, 0};

    fixture_init(&fx);
    CHECK_MSG(tly_replayer_open(fx.target, NULL, &r, err, sizeof(err)) == 0, "%s", err);
    CHECK_MSG(tly_store_begin(tly_replayer_store(r), err, sizeof(err)) == 0, "%s", err);
    for (int i = 0; lines[i]; i++) {
        CHECK_MSG(tly_replayer_apply_line(r, lines[i], strlen(lines[i]), &out, err, sizeof(err)) ==
                      0,
                  "line %d: %s", i, err);
        CHECK_INT(out.changed, changed[i]);
        CHECK_INT(out.gap_from, 0);
    }
    CHECK_MSG(tly_store_commit(tly_replayer_store(r), err, sizeof(err)) == 0, "%s", err);
    CHECK_INT(tly_replayer_last_seq(r), 8);
    CHECK(sqlite3_open(fx.target, &db) == SQLITE_OK);
    CHECK_STR(tly_test_query_text(db, "SELECT group_concat(store_id || ':' || sum_micros || ':' || "
                                      "key_seq || ':' || part, ' ') FROM (SELECT * FROM "
                                      "order_window_state ORDER BY store_id)"),
              "a:70:3:2 b:2:1:2 c:5:1:0 d:6:1:0 \xc3\xa8:4:1:2 \xc3\xa9:3:1:2");
    CHECK_INT(tly_test_query_int(db, "SELECT count(*) FROM changelog"), 8);
    CHECK_STR(tly_test_query_text(db, "SELECT image FROM changelog WHERE seq = 1"),
              "{\"store_id\":\"a\",\"product_id\":\"p\",\"window_start_ms\":0,\"sum_micros\":1,"
              "\"count\":1}");
    CHECK_STR(tly_test_query_text(db, "SELECT image FROM changelog WHERE seq = 2"),
              "{\"store_id\":\"b\",\"product_id\":\"p\",\"window_start_ms\":0,\"sum_micros\":2,"
              "\"count\":1}");
    CHECK_STR(tly_test_query_text(db, "SELECT key || ' ' || key_seq || ' ' || part FROM changelog "
                                      "WHERE seq = 7"),
              "a#p#0 3 2");
end:
    sqlite3_close(db);
    tly_replayer_close(r);
}

static const tly_testcase cases[] = {{"scan_lines_match_export", test_scan_lines_match_export},
                                     {"export_replay_roundtrip", test_export_replay_roundtrip},
                                     {"since_and_gaps", test_since_and_gaps},
                                     {"damaged_lines", test_damaged_lines},
                                     {"seq_range", test_seq_range},
                                     {"line_spellings", test_line_spellings},
                                     {"replay_restores_positions", test_replay_restores_positions},
                                     {NULL, NULL}};

int main(int argc, char **argv)
{
    return tly_test_main(argc, argv, cases);
}
