/* tests/unit/test_recovery.c - the local half of recovery (adapters/kafka/recovery.c):
 * checking the database, moving a failed one aside, choosing the newest
 * snapshot that verifies from the directory and the failed database's table,
 * refusing an empty start when snapshots existed, and a dry run that changes
 * nothing. No broker: cfg.brokers is NULL, so the snapshots topic, the
 * changelog topic and the group's offsets are not consulted (the real-broker
 * tests in tests/kafka cover those). */
#include "tly_test.h"

#include "changelog.h"
#include "pipeline.h"
#include "recovery.h"
#include "snapshot.h"
#include "store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>

/* Writes order i as JSON into buf. */
typedef void (*order_fn)(char *buf, size_t len, int i, int partition);

/* Orders over 7 stores and 50 products, 1.50 each. */
static void mixed_order(char *buf, size_t len, int i, int partition)
{
    (void)partition;
    snprintf(buf, len,
             "{\"orderId\":\"o%d\",\"productId\":\"p%d\",\"storeId\":\"s%d\",\"price\":\"1.50\","
             "\"qty\":1,\"ts\":1700000000000}",
             i, i % 50, i % 7);
}

/* Orders of the stores of one partition, as an input keyed by storeId has
 * them: partition 0 gets s0, s2, s4; partition 1 s1, s3, s5. 5 products, 2 each. */
static void store_order(char *buf, size_t len, int i, int partition)
{
    snprintf(buf, len,
             "{\"orderId\":\"o%d\",\"productId\":\"p%d\",\"storeId\":\"s%d\",\"price\":\"2\","
             "\"qty\":1,\"ts\":1700000000000}",
             i, i % 5, 2 * (i % 3) + partition);
}

/* Applies orders first .. first + n - 1 (made by make) to the database in one
 * transaction, as if read from input partition `partition`, and records what
 * the daemon would: the changelog offset, and the input position unless
 * input_offset < 0. */
static int apply_generated(const char *db_path, int first, int n, int partition, order_fn make,
                           int64_t changelog_offset, int64_t input_offset)
{
    char err[256], line[256];
    tly_store *store = NULL;
    tly_pipeline *p = NULL;
    tly_event event = {0};
    tly_event_result result;
    int rc = -1;

    if (tly_store_open(db_path, NULL, &store, err, sizeof(err)) < 0 ||
        tly_pipeline_open(store, "orders", NULL, 0, &p, err, sizeof(err)) < 0 ||
        tly_store_begin(store, err, sizeof(err)) < 0)
        goto done;
    for (int i = first; i < first + n; i++) {
        make(line, sizeof(line), i, partition);
        event.data = line;
        event.len = strlen(line);
        event.partition = partition;
        if (tly_pipeline_apply(p, &event, 1, &result, NULL, err, sizeof(err)) < 0)
            goto done;
    }
    snprintf(line, sizeof(line), "kafka.input.in.%d", partition);
    if (input_offset >= 0 && tly_store_meta_set_int(store, line, input_offset) < 0)
        goto done;
    snprintf(line, sizeof(line), "kafka.changelog.p-changelog.%d", partition);
    if (tly_store_meta_set_int(store, line, changelog_offset) < 0 ||
        tly_store_commit(store, err, sizeof(err)) < 0)
        goto done;
    rc = 0;
done:
    if (rc < 0)
        fprintf(stderr, "apply_generated: %s\n", err);
    tly_pipeline_close(p);
    tly_store_close(store);
    return rc;
}

/* n orders (ids from first) over 7 stores, as if read from input partition
 * `partition`. */
static int apply_orders_from(const char *db_path, int first, int n, int partition)
{
    return apply_generated(db_path, first, n, partition, mixed_order, first + n - 1, first + n);
}

static int apply_orders(const char *db_path, int first, int n)
{
    return apply_orders_from(db_path, first, n, 0);
}

static int64_t orders_in(const char *db_path)
{
    return tly_test_scalar(db_path, NULL, "SELECT coalesce(sum(count), 0) FROM order_window_state");
}

static void flip_bytes(const char *path, off_t at)
{
    int fd = open(path, O_WRONLY);
    if (fd >= 0) {
        (void)!pwrite(fd, "\xff\xff\xff\xff\xff\xff\xff\xff", 8, at);
        close(fd);
    }
}

/* The database's page size, from its header (bytes 16-17, big-endian). */
static off_t page_size_of(const char *path)
{
    unsigned char h[2] = {0, 0};
    int fd = open(path, O_RDONLY);
    if (fd >= 0) {
        (void)!pread(fd, h, 2, 16);
        close(fd);
    }
    return h[0] == 0 && h[1] == 1 ? 65536 : (off_t)(h[0] << 8 | h[1]);
}

static off_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? st.st_size : -1;
}

static int count_prefix(const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    while (d && (e = readdir(d)))
        if (strncmp(e->d_name, prefix, strlen(prefix)) == 0)
            n++;
    if (d)
        closedir(d);
    return n;
}

struct fixture {
    char dir[256], db[300], snaps[300];
    tly_topic_layout topics;
    tly_recovery_config cfg;
    tly_snapshot_manifest older, newer;
};

/* A database with 300 orders, snapshots after 100 and after 200. */
static int setup(struct fixture *f)
{
    char err[512];
    memset(f, 0, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "%s", tly_test_dir());
    snprintf(f->db, sizeof(f->db), "%s/orders.db", f->dir);
    snprintf(f->snaps, sizeof(f->snaps), "%s/snaps", f->dir);
    if (tly_topics_layout("orders", "p", "in", "out", &f->topics, err, sizeof(err)) < 0 ||
        apply_orders(f->db, 0, 100) < 0 ||
        tly_snapshot_write(f->db, f->snaps, 0, &f->older, err, sizeof(err)) < 0 ||
        apply_orders(f->db, 100, 100) < 0 ||
        tly_snapshot_write(f->db, f->snaps, 0, &f->newer, err, sizeof(err)) < 0 ||
        apply_orders(f->db, 200, 100) < 0) {
        fprintf(stderr, "setup: %s\n", err);
        return -1;
    }
    f->cfg.pipeline = "orders";
    f->cfg.topics = &f->topics;
    f->cfg.group_id = "g";
    f->cfg.db_path = f->db;
    f->cfg.snapshot_dir = f->snaps;
    f->cfg.changelog = 1;
    return 0;
}

static void test_intact(void)
{
    struct fixture f;
    tly_recovery_report *rep = calloc(1, sizeof(*rep));
    char err[1024];

    CHECK(rep && setup(&f) == 0);
    CHECK(tly_recovery_prepare(&f.cfg, rep, err, sizeof(err)) == 0);
    CHECK_STR(rep->db_state, "intact");
    CHECK_STR(rep->source, "local");
    CHECK_INT(rep->start_offsets[0], 299); /* the changelog offset it recorded */
    CHECK_INT(rep->start_offsets[1], -1);
    CHECK_INT(rep->chosen, -1);
    CHECK(tly_recovery_finish(&f.cfg, rep, err, sizeof(err)) == 0);
    CHECK_INT(orders_in(f.db), 300);
end:
    free(rep);
}

/* Missing database with a stale -wal beside it; the newest snapshot is
 * corrupt, so the one before it is restored and the -wal is moved aside. */
static void test_missing_newest_corrupt(void)
{
    struct fixture f;
    tly_recovery_report *rep = calloc(1, sizeof(*rep));
    char err[1024], wal[400];
    FILE *stale;

    CHECK(rep && setup(&f) == 0);
    CHECK(unlink(f.db) == 0);
    snprintf(wal, sizeof(wal), "%s-wal", f.db);
    CHECK((stale = fopen(wal, "w")) != NULL);
    fputs("not a wal", stale);
    fclose(stale);
    flip_bytes(f.newer.path, file_size(f.newer.path) / 2);

    CHECK(tly_recovery_prepare(&f.cfg, rep, err, sizeof(err)) == 0);
    CHECK_STR(rep->db_state, "missing");
    CHECK_INT(rep->candidate_count, 2);
    CHECK_STR(rep->candidates[0].manifest.snapshot_id, f.newer.snapshot_id);
    CHECK_MSG(strstr(rep->candidates[0].status, "checksum") != NULL, "%s",
              rep->candidates[0].status);
    CHECK_INT(rep->chosen, 1);
    CHECK_STR(rep->candidates[1].status, "restored");
    CHECK_STR(rep->source, "snapshot");
    CHECK_INT(rep->start_offsets[0], 99); /* from the older manifest */
    CHECK(rep->moved_aside[0] != '\0');
    CHECK(access(wal, F_OK) != 0);
    CHECK(tly_recovery_finish(&f.cfg, rep, err, sizeof(err)) == 0);
    CHECK_INT(orders_in(f.db), 100);
    CHECK_STR(rep->source, "snapshot");
end:
    free(rep);
}

/* A database that fails its check is moved aside (not deleted); with the
 * snapshot directory gone, its own snapshots table still names the files,
 * and a file found under the same name in --snapshot-dir is used. */
static void test_failed_database_table_manifests(void)
{
    struct fixture f;
    tly_recovery_report *rep = calloc(1, sizeof(*rep));
    char err[1024], json[4200];

    CHECK(rep && setup(&f) == 0);
    /* Damage a page well inside the file, past the schema; keep the table
     * of snapshots readable enough or not - either way it must recover. */
    flip_bytes(f.db, file_size(f.db) - page_size_of(f.db) * 3);
    flip_bytes(f.db, file_size(f.db) - page_size_of(f.db) * 5);
    snprintf(json, sizeof(json), "%.*s.json", (int)(strlen(f.newer.path) - 3), f.newer.path);
    CHECK(unlink(json) == 0); /* the directory no longer lists the newest */

    CHECK(tly_recovery_prepare(&f.cfg, rep, err, sizeof(err)) == 0);
    CHECK_MSG(strncmp(rep->db_state, "failed: ", 8) == 0, "%s", rep->db_state);
    CHECK(access(rep->moved_aside, F_OK) == 0);
    CHECK(count_prefix(f.dir, "orders.db.failed-") >= 1); /* with its -wal and -shm, if any */
    CHECK(rep->chosen >= 0);
    CHECK_STR(rep->source, "snapshot");
    if (strstr(rep->candidates[rep->chosen].found_in, "table"))
        CHECK_STR(rep->candidates[rep->chosen].manifest.snapshot_id, f.newer.snapshot_id);
    CHECK(tly_recovery_finish(&f.cfg, rep, err, sizeof(err)) == 0);
    CHECK(orders_in(f.db) == 100 || orders_in(f.db) == 200);
end:
    free(rep);
}

/* Snapshots of another database in a shared directory are not candidates. */
static void test_other_database_ignored(void)
{
    struct fixture f;
    tly_recovery_report *rep = calloc(1, sizeof(*rep));
    tly_snapshot_manifest other;
    char err[1024], other_db[400];

    CHECK(rep && setup(&f) == 0);
    snprintf(other_db, sizeof(other_db), "%s/telemetry.db", f.dir);
    CHECK(apply_orders(other_db, 0, 10) == 0);
    CHECK(tly_snapshot_write(other_db, f.snaps, 0, &other, err, sizeof(err)) == 0);
    CHECK(unlink(f.db) == 0);
    CHECK(tly_recovery_prepare(&f.cfg, rep, err, sizeof(err)) == 0);
    CHECK_INT(rep->candidate_count, 2);
    for (int i = 0; i < rep->candidate_count; i++)
        CHECK(strcmp(rep->candidates[i].manifest.snapshot_id, other.snapshot_id) != 0);
    CHECK_INT(orders_in(f.db), 200);
end:
    free(rep);
}

/* Every snapshot damaged and no changelog to replay: refusing to start empty,
 * saying why; --allow-empty starts. */
static void test_refuses_empty(void)
{
    struct fixture f;
    tly_recovery_report *rep = calloc(1, sizeof(*rep));
    char err[2048];

    CHECK(rep && setup(&f) == 0);
    CHECK(unlink(f.db) == 0);
    flip_bytes(f.newer.path, 100);
    CHECK(truncate(f.older.path, file_size(f.older.path) - 4096) == 0);
    CHECK(tly_recovery_prepare(&f.cfg, rep, err, sizeof(err)) == 0);
    CHECK_INT(rep->chosen, -1);
    CHECK_STR(rep->source, "new");
    CHECK(tly_recovery_finish(&f.cfg, rep, err, sizeof(err)) < 0);
    CHECK_MSG(strstr(err, "--allow-empty") && strstr(err, "none of the 2 snapshot"), "%s", err);
    f.cfg.allow_empty = 1;
    CHECK(tly_recovery_finish(&f.cfg, rep, err, sizeof(err)) == 0);
end:
    free(rep);
}

/* A dry run verifies but restores nothing and moves nothing. */
static void test_dry_run_changes_nothing(void)
{
    struct fixture f;
    tly_recovery_report *rep = calloc(1, sizeof(*rep));
    char err[1024];
    off_t size;

    CHECK(rep && setup(&f) == 0);
    flip_bytes(f.db, file_size(f.db) - page_size_of(f.db) * 3);
    size = file_size(f.db);
    f.cfg.dry_run = 1;
    CHECK(tly_recovery_prepare(&f.cfg, rep, err, sizeof(err)) == 0);
    CHECK_MSG(strncmp(rep->db_state, "failed: ", 8) == 0, "%s", rep->db_state);
    CHECK_INT(rep->chosen, 0);
    CHECK_STR(rep->candidates[0].status, "verifies");
    CHECK(rep->moved_aside[0] == '\0');
    CHECK_INT(count_prefix(f.dir, "orders.db.failed-"), 0);
    CHECK_INT(file_size(f.db), size);
    CHECK(tly_recovery_finish(&f.cfg, rep, err, sizeof(err)) == 0);
end:
    free(rep);
}

/* A database restored from an older snapshot does not list the newer ones in
 * its table; --snapshot-keep still holds for the directory. */
static void test_keep_after_restore(void)
{
    struct fixture f;
    tly_snapshot_manifest m;
    char err[1024];

    CHECK(setup(&f) == 0);
    CHECK(unlink(f.db) == 0);
    CHECK(tly_snapshot_restore(&f.older, f.db, err, sizeof(err)) == 0);
    CHECK(apply_orders(f.db, 100, 10) == 0);
    CHECK(tly_snapshot_write(f.db, f.snaps, 2, &m, err, sizeof(err)) == 0);
    CHECK_INT(count_prefix(f.snaps, "snapshot-"), 4); /* 2 x (.db + .json) */
    CHECK(access(f.older.path, F_OK) != 0);
    CHECK(access(f.newer.path, F_OK) == 0);
    CHECK(access(m.path, F_OK) == 0);
end:
    return;
}

/* A database another process holds (busy) is not damaged: the start stops
 * with the reason and the file stays where it is. Takes the 5 s busy wait. */
static void test_busy_is_not_damaged(void)
{
    struct fixture f;
    tly_recovery_report *rep = calloc(1, sizeof(*rep));
    sqlite3 *holder = NULL;
    char err[1024];

    CHECK(rep && setup(&f) == 0);
    CHECK(sqlite3_open(f.db, &holder) == SQLITE_OK);
    CHECK(sqlite3_exec(holder,
                       "PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE;"
                       " INSERT INTO meta VALUES ('held', 1);",
                       NULL, NULL, NULL) == SQLITE_OK);
    CHECK(tly_recovery_prepare(&f.cfg, rep, err, sizeof(err)) < 0);
    CHECK_MSG(strstr(err, "cannot check the database") && strstr(err, "locked"), "%s", err);
    CHECK_INT(count_prefix(f.dir, "orders.db.failed-"), 0);
    sqlite3_exec(holder, "ROLLBACK", NULL, NULL, NULL);
    sqlite3_close(holder);
    holder = NULL;
    CHECK_INT(orders_in(f.db), 300);
end:
    sqlite3_close(holder);
    free(rep);
}

/* Orders of one partition's stores (store_order); the changelog offset
 * recorded is first + n, no input position. */
static int apply_store_orders(const char *db_path, int first, int n, int partition)
{
    return apply_generated(db_path, first, n, partition, store_order, first + n, -1);
}

/* Two input partitions in one database: rows, counters and positions per
 * partition; dropping one leaves the other exactly as it was, and the totals
 * become the other's. Stores are split by parity, as an input keyed by
 * storeId would be. */
static void test_partitions_drop(void)
{
    char dir[256], db[300], err[512];
    tly_topic_layout topics;
    tly_recovery_config cfg = {0};
    tly_store *store = NULL;
    unsigned char present[TLY_MAX_PARTITIONS];

    snprintf(dir, sizeof(dir), "%s", tly_test_dir());
    snprintf(db, sizeof(db), "%s/parts.db", dir);
    CHECK(tly_topics_layout("orders", "p", "in", "out", &topics, err, sizeof(err)) == 0);
    cfg.pipeline = "orders";
    cfg.topics = &topics;
    cfg.db_path = db;
    cfg.changelog = 1;
    CHECK(apply_store_orders(db, 0, 60, 0) == 0);
    CHECK(apply_store_orders(db, 60, 45, 1) == 0);
    /* rows and changelog rows carry their partition */
    CHECK_INT(tly_test_scalar(db, NULL, "SELECT sum(count) FROM order_window_state WHERE part = 0"),
              60);
    CHECK_INT(tly_test_scalar(db, NULL, "SELECT sum(count) FROM order_window_state WHERE part = 1"),
              45);
    CHECK_INT(
        tly_test_scalar(db, NULL,
                        "SELECT count(*) FROM changelog WHERE part IS NULL OR part NOT IN (0, 1)"),
        0);
    CHECK_INT(tly_test_scalar(db, NULL, "SELECT count(DISTINCT part) FROM changelog"), 2);
    CHECK_INT(
        tly_test_scalar(db, NULL,
                        "SELECT value FROM meta WHERE key = 'pipeline.orders.p0.events_applied'"),
        60);
    CHECK_INT(
        tly_test_scalar(db, NULL,
                        "SELECT value FROM meta WHERE key = 'pipeline.orders.p1.events_applied'"),
        45);
    CHECK_INT(tly_test_scalar(
                  db, NULL, "SELECT value FROM meta WHERE key = 'pipeline.orders.events_applied'"),
              105);
    CHECK_INT(tly_test_scalar(
                  db, NULL,
                  "SELECT coalesce((SELECT value FROM meta WHERE key = 'state.rows_moved'), 0)"),
              0);

    CHECK(tly_store_open(db, NULL, &store, err, sizeof(err)) == 0);
    CHECK_MSG(tly_recovery_present(store, &cfg, present, err, sizeof(err)) == 0, "%s", err);
    CHECK(present[0] && present[1] && !present[2]);
    CHECK_MSG(tly_recovery_drop(store, &cfg, 1, err, sizeof(err)) == 0, "%s", err);
    CHECK(tly_store_begin(store, err, sizeof(err)) == 0);
    CHECK_MSG(tly_changelog_sum_counters(store, "orders", err, sizeof(err)) == 0, "%s", err);
    CHECK(tly_store_commit(store, err, sizeof(err)) == 0);
    CHECK_MSG(tly_recovery_present(store, &cfg, present, err, sizeof(err)) == 0, "%s", err);
    CHECK(present[0] && !present[1]);
    tly_store_close(store);
    store = NULL;
    CHECK_INT(tly_test_scalar(db, NULL, "SELECT count(*) FROM order_window_state WHERE part = 1"),
              0);
    CHECK_INT(tly_test_scalar(db, NULL, "SELECT sum(count) FROM order_window_state"), 60);
    CHECK_INT(
        tly_test_scalar(
            db, NULL, "SELECT count(*) FROM meta WHERE key LIKE '%.p1.%' OR key LIKE 'kafka.%.1'"),
        0);
    CHECK_INT(tly_test_scalar(
                  db, NULL, "SELECT value FROM meta WHERE key = 'pipeline.orders.events_applied'"),
              60);
    CHECK_INT(tly_test_scalar(db, NULL,
                              "SELECT value FROM meta WHERE key = 'kafka.changelog.p-changelog.0'"),
              60);
    /* the database's own history stays */
    CHECK_INT(tly_test_scalar(db, NULL, "SELECT count(DISTINCT part) FROM changelog"), 2);

    /* An event of partition 1 for partition 0's store moves the row: counted. */
    CHECK(apply_store_orders(db, 700, 3, 1) == 0); /* s1, s3, s5: partition 1's again */
    CHECK_INT(tly_test_scalar(
                  db, NULL,
                  "SELECT coalesce((SELECT value FROM meta WHERE key = 'state.rows_moved'), 0)"),
              0);
    CHECK(apply_orders_from(db, 0, 1, 1) == 0); /* s0 p0: partition 0's row */
    CHECK_INT(tly_test_scalar(db, NULL, "SELECT value FROM meta WHERE key = 'state.rows_moved'"),
              1);
    CHECK_INT(
        tly_test_scalar(
            db, NULL,
            "SELECT part FROM order_window_state WHERE store_id = 's0' AND product_id = 'p0'"),
        1);
end:
    tly_store_close(store);
}

/* Partition 1 taken over from another instance's snapshot: exactly its rows
 * and counters come over, none of partition 0's, and no changelog row is
 * written for them (triggers off); the partitions table says where they came
 * from. A snapshot that does not verify is passed over for an older one.
 * (Without brokers the changelog tail is not read: the Kafka tests do that.) */
static void test_partitions_take_from_snapshot(void)
{
    char dir[256], a[300], b[300], snaps[300], err[512];
    tly_topic_layout topics;
    tly_recovery_config cfg = {0};
    tly_snapshot_manifest older, newer;
    tly_partition_take take = {.partition = 1};

    snprintf(dir, sizeof(dir), "%s", tly_test_dir());
    snprintf(a, sizeof(a), "%s/a.db", dir);
    snprintf(b, sizeof(b), "%s/b.db", dir);
    snprintf(snaps, sizeof(snaps), "%s/shared", dir);
    CHECK(tly_topics_layout("orders", "p", "in", "out", &topics, err, sizeof(err)) == 0);
    CHECK(apply_store_orders(a, 0, 40, 0) == 0);
    CHECK(apply_store_orders(a, 40, 30, 1) == 0);
    CHECK_MSG(tly_snapshot_write(a, snaps, 0, &older, err, sizeof(err)) == 0, "%s", err);
    CHECK(apply_store_orders(a, 70, 20, 1) == 0);
    CHECK_MSG(tly_snapshot_write(a, snaps, 0, &newer, err, sizeof(err)) == 0, "%s", err);
    CHECK(apply_store_orders(b, 200, 10, 0) == 0); /* b holds partition 0 of its own */

    cfg.pipeline = "orders";
    cfg.topics = &topics;
    cfg.db_path = b;
    cfg.snapshot_dir = snaps;
    cfg.changelog = 1;
    flip_bytes(newer.path, page_size_of(newer.path) * 2 + 100);
    CHECK_MSG(tly_recovery_take(&cfg, "order_window", &take, 1, err, sizeof(err)) == TLY_TAKE_DONE,
              "%s", err);
    CHECK_STR(take.source, "snapshot");
    CHECK_STR(take.snapshot_id, older.snapshot_id);
    CHECK_INT(tly_test_scalar(b, NULL, "SELECT sum(count) FROM order_window_state WHERE part = 1"),
              30);
    CHECK_INT(tly_test_scalar(b, NULL, "SELECT sum(count) FROM order_window_state WHERE part = 0"),
              10);
    CHECK_INT(
        tly_test_scalar(b, older.path,
                        "SELECT count(*) FROM (SELECT * FROM order_window_state WHERE part = 1 "
                        "EXCEPT SELECT * FROM other.order_window_state WHERE part = 1)"),
        0);
    CHECK_INT(
        tly_test_scalar(b, NULL,
                        "SELECT value FROM meta WHERE key = 'pipeline.orders.p1.events_applied'"),
        30);
    CHECK_INT(tly_test_scalar(b, NULL,
                              "SELECT value FROM meta WHERE key = 'kafka.changelog.p-changelog.1'"),
              70);
    CHECK_INT(tly_test_scalar(b, NULL, "SELECT count(*) FROM changelog WHERE part = 1"), 0);
    CHECK_INT(
        tly_test_scalar(b, NULL,
                        "SELECT count(*) FROM partitions WHERE part = 1 AND source = 'snapshot'"),
        1);
    /* again: b now holds partition 1 as far as any good snapshot does */
    take.source = NULL;
    CHECK_MSG(tly_recovery_take(&cfg, "order_window", &take, 1, err, sizeof(err)) == TLY_TAKE_DONE,
              "%s", err);
    CHECK_STR(take.source, "local");
    CHECK_INT(tly_test_scalar(b, NULL, "SELECT sum(count) FROM order_window_state WHERE part = 1"),
              30);
end:
    return;
}

static const tly_testcase cases[] = {
    {"intact", test_intact},
    {"missing_newest_corrupt", test_missing_newest_corrupt},
    {"failed_database_table_manifests", test_failed_database_table_manifests},
    {"other_database_ignored", test_other_database_ignored},
    {"refuses_empty", test_refuses_empty},
    {"dry_run_changes_nothing", test_dry_run_changes_nothing},
    {"keep_after_restore", test_keep_after_restore},
    {"busy_is_not_damaged", test_busy_is_not_damaged},
    {"partitions_drop", test_partitions_drop},
    {"partitions_take_from_snapshot", test_partitions_take_from_snapshot},
    {NULL, NULL}};

int main(int argc, char **argv)
{
    return tly_test_main(argc, argv, cases);
}
