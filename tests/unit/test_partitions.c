/* tests/unit/test_partitions.c - the engine's own tables as the daemon uses
 * them: meta keys and positions, the partitions a database holds, forgetting
 * and adopting one partition, changelog pruning, recorded snapshots. */
#include "tly_test.h"

#include "changelog.h"
#include "meta.h"
#include "partitions.h"
#include "snapshot.h"
#include "store.h"

#include <sqlite3.h>
#include <stdint.h>

#define count_rows(store, sql) tly_test_query_int(tly_store_db(store), sql)

/* Two order windows in each of partitions 0, 1 and 3, positions and counters
 * for each, as batches of the daemon would leave them. */
static int fill(tly_store *store, char *err, size_t errlen)
{
    static const int parts[] = {0, 1, 3};
    if (tly_store_begin(store, err, errlen) < 0)
        return -1;
    for (int i = 0; i < 3; i++) {
        int p = parts[i];
        char sql[512], key[256];
        snprintf(sql, sizeof(sql),
                 "INSERT INTO order_window_state (store_id, product_id, window_start_ms, "
                 "sum_micros, count, key_seq, part) VALUES ('s%d', 'a', 0, 1, 1, 1, %d), "
                 "('s%d', 'b', 0, 2, 1, 1, %d)",
                 p, p, p, p);
        if (tly_store_exec(store, sql, err, errlen) < 0)
            return -1;
        tly_meta_key_position(TLY_META_INPUT, "in", p, key, sizeof(key));
        if (tly_store_meta_set_int(store, key, 100 + p) < 0)
            return -1;
        tly_meta_key_position(TLY_META_CHANGELOG, "cl", p, key, sizeof(key));
        if (tly_store_meta_set_int(store, key, 10 + p) < 0)
            return -1;
        snprintf(key, sizeof(key), "pipeline.orders.p%d.events_applied", p);
        if (tly_store_meta_set_int(store, key, 2) < 0)
            return -1;
    }
    /* a topic whose name extends "cl" must not read as one of its keys */
    if (tly_store_meta_set_int(store, "kafka.changelog.cl.x.7", 99) < 0)
        return -1;
    return tly_store_commit(store, err, errlen);
}

static void test_meta_keys(void)
{
    char key[128];
    tly_meta_key_position(TLY_META_INPUT, "orders.enriched", 3, key, sizeof(key));
    CHECK_STR(key, "kafka.input.orders.enriched.3");
    tly_meta_key_position(TLY_META_CHANGELOG, "opb-changelog", 0, key, sizeof(key));
    CHECK_STR(key, "kafka.changelog.opb-changelog.0");
    tly_meta_key_position_prefix(TLY_META_INPUT, "t", key, sizeof(key));
    CHECK_STR(key, "kafka.input.t.");
    tly_meta_key_events("orders", "late", key, sizeof(key));
    CHECK_STR(key, "pipeline.orders.events_late");
    tly_meta_glob_partition_counters(12, key, sizeof(key));
    CHECK_STR(key, "pipeline.*.p12.events_*");
    /* a short buffer gets a NUL-terminated beginning, never an overrun */
    memset(key, 'Z', sizeof(key));
    tly_meta_key_position(TLY_META_INPUT, "orders", 7, key, 8);
    CHECK_STR(key, "kafka.i");
    CHECK(key[8] == 'Z');
end:;
}

static void test_positions_and_history(void)
{
    const char *dir = tly_test_dir();
    char path[256], err[256];
    tly_store *store = NULL;
    int64_t offsets[TLY_MAX_PARTITIONS], v = 0;

    snprintf(path, sizeof(path), "%s/state.db", dir);
    CHECK_MSG(tly_store_open(path, NULL, &store, err, sizeof(err)) == 0, "%s", err);
    CHECK_INT(tly_meta_has_history(tly_store_db(store), err, sizeof(err)), 0);
    CHECK_INT(tly_meta_has_positions(tly_store_db(store)), 0);
    CHECK_MSG(fill(store, err, sizeof(err)) == 0, "%s", err);
    CHECK_INT(tly_meta_has_history(tly_store_db(store), err, sizeof(err)), 1);
    CHECK_INT(tly_meta_has_positions(tly_store_db(store)), 1);
    for (int p = 0; p < TLY_MAX_PARTITIONS; p++)
        offsets[p] = -1;
    CHECK_INT(tly_meta_read_positions(tly_store_db(store), TLY_META_CHANGELOG, "cl", offsets), 3);
    CHECK_INT(offsets[0], 10);
    CHECK_INT(offsets[1], 11);
    CHECK_INT(offsets[2], -1);
    CHECK_INT(offsets[3], 13);
    CHECK_INT(offsets[7], -1);
    CHECK_INT(tly_meta_get_int(tly_store_db(store), "kafka.input.in.3", &v), 1);
    CHECK_INT(v, 103);
    CHECK_INT(tly_meta_get_int(tly_store_db(store), "kafka.input.in.2", &v), 0);
end:
    tly_store_close(store);
}

static void test_forget_and_present(void)
{
    const char *dir = tly_test_dir();
    char path[256], err[256];
    tly_store *store = NULL;
    unsigned char present[TLY_MAX_PARTITIONS], listed[TLY_MAX_PARTITIONS];
    tly_partition_row rows[] = {{0, 1000, "local", 5, 0}, {1, 1000, "snapshot", 7, 42}};
    int64_t v;

    snprintf(path, sizeof(path), "%s/state.db", dir);
    CHECK_MSG(tly_store_open(path, NULL, &store, err, sizeof(err)) == 0, "%s", err);
    CHECK_MSG(fill(store, err, sizeof(err)) == 0, "%s", err);
    CHECK_MSG(tly_partitions_record(store, rows, 2, err, sizeof(err)) == 0, "%s", err);
    CHECK_INT(tly_partitions_count(store), 2);
    CHECK_INT(tly_partitions_listed(tly_store_db(store), listed), 2);
    CHECK(listed[0] && listed[1] && !listed[3]);
    CHECK_MSG(tly_partitions_present(store, "cl", present, err, sizeof(err)) == 0, "%s", err);
    CHECK(present[0] && present[1] && !present[2] && present[3] && !present[7]);

    CHECK_MSG(tly_store_begin(store, err, sizeof(err)) == 0, "%s", err);
    CHECK_MSG(tly_partitions_forget(store, 1, "in", "cl", err, sizeof(err)) == 0, "%s", err);
    CHECK_MSG(tly_store_commit(store, err, sizeof(err)) == 0, "%s", err);
    CHECK_INT(count_rows(store, "SELECT count(*) FROM order_window_state WHERE part = 1"), 0);
    CHECK_INT(count_rows(store, "SELECT count(*) FROM order_window_state"), 4);
    CHECK_INT(tly_store_meta_get_int(store, "kafka.input.in.1", &v), 0);
    CHECK_INT(tly_store_meta_get_int(store, "kafka.changelog.cl.1", &v), 0);
    CHECK_INT(tly_store_meta_get_int(store, "pipeline.orders.p1.events_applied", &v), 0);
    CHECK_INT(tly_store_meta_get_int(store, "kafka.input.in.0", &v), 1);
    CHECK_INT(tly_partitions_count(store), 1);
    CHECK_MSG(tly_partitions_present(store, "cl", present, err, sizeof(err)) == 0, "%s", err);
    CHECK(present[0] && !present[1] && present[3]);

    CHECK_MSG(tly_partitions_reset(store, err, sizeof(err)) == 0, "%s", err);
    CHECK_INT(tly_partitions_count(store), 0);
end:
    tly_store_close(store);
}

/* A snapshot holds partitions 0, 1, 3; a second database that holds other
 * rows of partition 1 adopts the snapshot's partition 1 only. */
static void test_adopt(void)
{
    const char *dir = tly_test_dir();
    char src_path[256], dst_path[256], err[256];
    tly_store *src = NULL, *dst = NULL;
    tly_snapshot_manifest m;
    int64_t v;

    snprintf(src_path, sizeof(src_path), "%s/src.db", dir);
    snprintf(dst_path, sizeof(dst_path), "%s/dst.db", dir);
    CHECK_MSG(tly_store_open(src_path, NULL, &src, err, sizeof(err)) == 0, "%s", err);
    CHECK_MSG(fill(src, err, sizeof(err)) == 0, "%s", err);
    CHECK_MSG(tly_snapshot_copy(src_path, dir, &m, err, sizeof(err)) == 0, "%s", err);
    CHECK_MSG(tly_store_open(dst_path, NULL, &dst, err, sizeof(err)) == 0, "%s", err);
    CHECK_MSG(
        tly_store_exec(dst,
                       "INSERT INTO order_window_state (store_id, product_id, window_start_ms, "
                       "sum_micros, count, key_seq, part) VALUES ('old', 'x', 0, 9, 9, 1, 1), "
                       "('keep', 'y', 0, 5, 5, 1, 2)",
                       err, sizeof(err)) == 0,
        "%s", err);
    CHECK_MSG(tly_partitions_adopt(dst, m.path, 1, "in", "cl", 77, err, sizeof(err)) == 0, "%s",
              err);
    CHECK_INT(count_rows(dst, "SELECT count(*) FROM order_window_state WHERE part = 1"), 2);
    CHECK_INT(count_rows(dst, "SELECT count(*) FROM order_window_state WHERE store_id = 'old'"), 0);
    CHECK_INT(count_rows(dst, "SELECT count(*) FROM order_window_state WHERE part = 2"), 1);
    CHECK_INT(count_rows(dst, "SELECT count(*) FROM order_window_state WHERE part IN (0, 3)"), 0);
    CHECK_INT(tly_store_meta_get_int(dst, "kafka.changelog.cl.1", &v), 1);
    CHECK_INT(v, 77);
    /* the snapshot's input position comes along: no changelog may follow */
    CHECK_INT(tly_store_meta_get_int(dst, "kafka.input.in.1", &v), 1);
    CHECK_INT(v, 101);
    CHECK_INT(tly_store_meta_get_int(dst, "kafka.input.in.2", &v), 0);
    CHECK_INT(tly_store_meta_get_int(dst, "pipeline.orders.p1.events_applied", &v), 1);
    CHECK_INT(v, 2);
    /* not attached any more: a second adoption works */
    CHECK_MSG(tly_partitions_adopt(dst, m.path, 3, "in", "cl", 78, err, sizeof(err)) == 0, "%s",
              err);
    CHECK_INT(count_rows(dst, "SELECT count(*) FROM order_window_state WHERE part = 3"), 2);
    /* a file that is not a database of this schema changes nothing */
    CHECK(tly_partitions_adopt(dst, "/nonexistent/x.db", 0, "in", "cl", 1, err, sizeof(err)) < 0);
    CHECK_INT(count_rows(dst, "SELECT count(*) FROM order_window_state"), 5);
end:
    tly_store_close(src);
    tly_store_close(dst);
}

static void test_prune_and_snapshots(void)
{
    const char *dir = tly_test_dir();
    char path[256], err[256];
    tly_store *store = NULL;
    tly_snapshot_manifest m, *listed = NULL;
    int n = 0;
    int64_t last;

    snprintf(path, sizeof(path), "%s/state.db", dir);
    CHECK_MSG(tly_store_open(path, NULL, &store, err, sizeof(err)) == 0, "%s", err);
    CHECK_MSG(fill(store, err, sizeof(err)) == 0, "%s", err);
    last = tly_store_last_seq(store);
    CHECK_INT(tly_changelog_rows(store), 6);
    CHECK_INT(tly_changelog_max_seq(tly_store_db(store)), last);
    /* rows up to seq 4 may go and none changed after the cutoff: all four */
    CHECK_INT(tly_changelog_prune_bound(store, 4, INT64_MAX), 5);
    /* every row changed after the cutoff: the first one bounds it, none go */
    CHECK_INT(tly_changelog_prune_bound(store, 4, 0), 1);
    CHECK_INT(tly_changelog_prune(store, 5, 3, err, sizeof(err)), 3);
    CHECK_INT(tly_changelog_prune(store, 5, 3, err, sizeof(err)), 1);
    CHECK_INT(tly_changelog_prune(store, 5, 3, err, sizeof(err)), 0);
    CHECK_INT(tly_changelog_rows(store), 2);
    CHECK(tly_store_vacuum_step(store, 1024, err, sizeof(err)) >= 0);

    CHECK_INT(tly_snapshot_newest_recorded(store), 0);
    CHECK_MSG(tly_snapshot_copy(path, dir, &m, err, sizeof(err)) == 0, "%s", err);
    CHECK_MSG(tly_snapshot_record(store, 0, &m, err, sizeof(err)) == 0, "%s", err);
    CHECK_INT(tly_snapshot_newest_recorded(store), last);
    CHECK_MSG(tly_snapshot_list_recorded(path, &listed, &n, err, sizeof(err)) == 0, "%s", err);
    CHECK_INT(n, 1);
    CHECK_STR(listed[0].snapshot_id, m.snapshot_id);
    CHECK_STR(listed[0].checksum, m.checksum);
    CHECK_STR(listed[0].database, "state.db");
    CHECK_INT(listed[0].last_seq, last);
    free(listed);
    listed = NULL;
    CHECK_MSG(tly_snapshot_list_recorded("/nonexistent/x.db", &listed, &n, err, sizeof(err)) == 0,
              "%s", err);
    CHECK_INT(n, 0);
end:
    free(listed);
    tly_store_close(store);
}

static const tly_testcase cases[] = {{"meta_keys", test_meta_keys},
                                     {"positions_and_history", test_positions_and_history},
                                     {"forget_and_present", test_forget_and_present},
                                     {"adopt", test_adopt},
                                     {"prune_and_snapshots", test_prune_and_snapshots},
                                     {NULL, NULL}};

int main(int argc, char **argv)
{
    return tly_test_main(argc, argv, cases);
}
