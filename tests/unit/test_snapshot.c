/* tests/unit/test_snapshot.c - snapshots under continuous writes restore to
 * exactly the state at their manifest's seq; corruption is detected; only the
 * newest are kept. */
#include "tly_test.h"

#include "changelog.h"
#include "pipeline.h"
#include "snapshot.h"
#include "store.h"

#include <dirent.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/wait.h>

static volatile sig_atomic_t writer_stop;

static void on_term(int sig)
{
    (void)sig;
    writer_stop = 1;
}

/* Applies batches of orders to db_path until SIGTERM; exits 0 if all went well. */
static void run_writer(const char *db_path)
{
    char err[256], lines[100][200];
    tly_store *store = NULL;
    tly_pipeline *p = NULL;
    tly_event events[100] = {{0}};
    tly_event_result results[100];
    int b = 0;

    signal(SIGTERM, on_term);
    if (tly_store_open(db_path, NULL, &store, err, sizeof(err)) < 0 ||
        tly_pipeline_open(store, "orders", NULL, 0, &p, err, sizeof(err)) < 0)
        _exit(3);
    while (!writer_stop) {
        for (int i = 0; i < 100; i++) {
            snprintf(
                lines[i], sizeof(lines[i]),
                "{\"orderId\":\"%d-%d\",\"productId\":\"p%d\",\"storeId\":\"s%d\",\"price\":\"%d.25\",\"qty\":1,\"ts\":%lld}",
                b, i, (b + i) % 13, i % 7, i, 1700000000000LL + b * 997LL);
            events[i].data = lines[i];
            events[i].len = strlen(lines[i]);
        }
        if (tly_store_begin(store, err, sizeof(err)) < 0 ||
            tly_pipeline_apply(p, events, 100, results, NULL, err, sizeof(err)) < 0 ||
            tly_store_commit(store, err, sizeof(err)) < 0)
            _exit(4);
        b++;
    }
    tly_pipeline_close(p);
    tly_store_close(store);
    _exit(b > 0 ? 0 : 5);
}

static int count_files(const char *dir, const char *suffix)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    while (d && (e = readdir(d)))
        if (strlen(e->d_name) > strlen(suffix) &&
            strcmp(e->d_name + strlen(e->d_name) - strlen(suffix), suffix) == 0 &&
            e->d_name[0] != '.')
            n++;
    if (d)
        closedir(d);
    return n;
}

/* Replays the source's changelog rows after `since` into target. */
static int replay_since(const char *source, int64_t since, const char *target, const char *dir)
{
    char path[300], err[256], *line = NULL;
    size_t cap = 0;
    ssize_t len;
    tly_replayer *r = NULL;
    FILE *f;
    int rc = -1;

    snprintf(path, sizeof(path), "%s/tail.jsonl", dir);
    if (!(f = fopen(path, "w")))
        return -1;
    if (tly_changelog_export(source, since, f, NULL, NULL, err, sizeof(err)) < 0) {
        fclose(f);
        return -1;
    }
    fclose(f);
    if (!(f = fopen(path, "r")) || tly_replayer_open(target, NULL, &r, err, sizeof(err)) < 0 ||
        tly_store_begin(tly_replayer_store(r), err, sizeof(err)) < 0)
        goto done;
    while ((len = getline(&line, &cap, f)) > 0) {
        tly_replay_outcome out;
        if (tly_replayer_apply_line(r, line, (size_t)len, &out, err, sizeof(err)) < 0 ||
            out.gap_from) {
            fprintf(stderr, "replay: %s gap=%lld\n", err, (long long)out.gap_from);
            goto done;
        }
    }
    rc = tly_store_commit(tly_replayer_store(r), err, sizeof(err));
done:
    if (rc < 0)
        fprintf(stderr, "replay_since: %s\n", err);
    free(line);
    if (f)
        fclose(f);
    tly_replayer_close(r);
    return rc;
}

static void test_snapshot_under_writes_is_exact(void)
{
    const char *dir = tly_test_dir();
    char db_path[256], snap_dir[256], restored[256], json_path[4200], err[512];
    tly_snapshot_manifest m, read_back;
    pid_t writer = -1;
    int status;

    snprintf(db_path, sizeof(db_path), "%s/state.db", dir);
    snprintf(snap_dir, sizeof(snap_dir), "%s/snapshots", dir);
    snprintf(restored, sizeof(restored), "%s/restored.db", dir);
    {
        tly_store *store = NULL;
        CHECK_MSG(tly_store_open(db_path, NULL, &store, err, sizeof(err)) == 0, "%s", err);
        /* offsets as the daemon records them */
        CHECK(tly_store_meta_set_int(store, "kafka.changelog.opb-changelog.0", 41) == 0);
        tly_store_close(store);
    }
    writer = fork();
    CHECK(writer >= 0);
    if (writer == 0)
        run_writer(db_path);
    usleep(300000);
    CHECK_MSG(tly_snapshot_write(db_path, snap_dir, 3, &m, err, sizeof(err)) == 0, "%s", err);
    usleep(200000);
    kill(writer, SIGTERM);
    CHECK(waitpid(writer, &status, 0) == writer);
    writer = -1;
    CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0, "writer status %d", status);

    CHECK(m.last_seq > 0);
    CHECK(m.bytes > 0);
    CHECK_STR(m.changelog_offsets, "{\"opb-changelog.0\":41}");
    CHECK(strstr(m.path, snap_dir) == m.path);
    CHECK_MSG(tly_snapshot_verify(&m, err, sizeof(err)) == 0, "%s", err);
    /* the manifest file says the same */
    snprintf(json_path, sizeof(json_path), "%.*s.json", (int)(strlen(m.path) - 3), m.path);
    CHECK_MSG(tly_snapshot_read_manifest(json_path, &read_back, err, sizeof(err)) == 0, "%s", err);
    CHECK_STR(read_back.snapshot_id, m.snapshot_id);
    CHECK_STR(read_back.checksum, m.checksum);
    CHECK_INT(read_back.last_seq, m.last_seq);
    CHECK_INT(read_back.bytes, m.bytes);
    /* and the source recorded it */
    CHECK_INT(tly_test_scalar(db_path, NULL, "SELECT count(*) FROM snapshots"), 1);
    /* The writer went on after the snapshot... */
    CHECK(tly_test_scalar(db_path, NULL, "SELECT max(seq) FROM changelog") > m.last_seq);
    /* ...and the copy is the state at exactly last_seq: its own changelog ends
     * there, its counters agree with its state, */
    CHECK_INT(tly_test_scalar(m.path, NULL, "SELECT max(seq) FROM changelog"), m.last_seq);
    CHECK_INT(
        tly_test_scalar(m.path, NULL,
                        "SELECT (SELECT sum(count) FROM order_window_state) = "
                        "(SELECT value FROM meta WHERE key = 'pipeline.orders.events_applied')"),
        1);
    /* and restore + the changelog after last_seq == the source, exactly. */
    CHECK_MSG(tly_snapshot_restore(&m, restored, err, sizeof(err)) == 0, "%s", err);
    CHECK(replay_since(db_path, m.last_seq, restored, dir) == 0);
    CHECK_INT(
        tly_test_scalar(
            db_path, restored,
            "SELECT (SELECT count(*) FROM (SELECT * FROM main.order_window_state EXCEPT SELECT * FROM other.order_window_state))"
            " + (SELECT count(*) FROM (SELECT * FROM other.order_window_state EXCEPT SELECT * FROM main.order_window_state))"
            " + (SELECT count(*) FROM (SELECT seq, key, key_seq, image FROM main.changelog EXCEPT SELECT seq, key, key_seq, image FROM other.changelog))"),
        0);
    /* restore never overwrites */
    CHECK(tly_snapshot_restore(&m, restored, err, sizeof(err)) < 0);
    CHECK(strstr(err, "exists") != NULL);
end:
    if (writer > 0) {
        kill(writer, SIGKILL);
        waitpid(writer, NULL, 0);
    }
}

static void test_corruption_is_detected(void)
{
    const char *dir = tly_test_dir();
    char db_path[256], snap_dir[256], err[512];
    tly_snapshot_manifest m;
    tly_store *store = NULL;
    FILE *f;

    snprintf(db_path, sizeof(db_path), "%s/state.db", dir);
    snprintf(snap_dir, sizeof(snap_dir), "%s/snapshots", dir);
    CHECK_MSG(tly_store_open(db_path, NULL, &store, err, sizeof(err)) == 0, "%s", err);
    tly_store_close(store);
    CHECK_MSG(tly_snapshot_write(db_path, snap_dir, 0, &m, err, sizeof(err)) == 0, "%s", err);
    CHECK(tly_snapshot_verify(&m, err, sizeof(err)) == 0);
    /* flip one byte in the middle */
    f = fopen(m.path, "r+b");
    CHECK(f);
    fseek(f, m.bytes / 2, SEEK_SET);
    {
        int c = fgetc(f);
        fseek(f, m.bytes / 2, SEEK_SET);
        fputc(c ^ 0x5a, f);
    }
    fclose(f);
    CHECK(tly_snapshot_verify(&m, err, sizeof(err)) < 0);
    CHECK_MSG(strstr(err, "checksum") != NULL, "%s", err);
    /* truncate */
    CHECK(truncate(m.path, m.bytes - 100) == 0);
    CHECK(tly_snapshot_verify(&m, err, sizeof(err)) < 0);
    CHECK_MSG(strstr(err, "bytes") != NULL, "%s", err);
    /* a damaged snapshot is never restored */
    {
        char restored[300];
        snprintf(restored, sizeof(restored), "%s/restored.db", dir);
        CHECK(tly_snapshot_restore(&m, restored, err, sizeof(err)) < 0);
        CHECK(access(restored, F_OK) != 0);
    }
end:;
}

static void test_keeps_the_newest(void)
{
    const char *dir = tly_test_dir();
    char db_path[256], snap_dir[256], err[512];
    tly_snapshot_manifest m;
    tly_store *store = NULL;

    snprintf(db_path, sizeof(db_path), "%s/state.db", dir);
    snprintf(snap_dir, sizeof(snap_dir), "%s/snapshots", dir);
    CHECK_MSG(tly_store_open(db_path, NULL, &store, err, sizeof(err)) == 0, "%s", err);
    tly_store_close(store);
    for (int i = 0; i < 4; i++) {
        CHECK_MSG(tly_snapshot_write(db_path, snap_dir, 2, &m, err, sizeof(err)) == 0, "%s", err);
        usleep(2000); /* distinct ids */
    }
    CHECK_INT(count_files(snap_dir, ".db"), 2);
    CHECK_INT(count_files(snap_dir, ".json"), 2);
    CHECK_INT(tly_test_scalar(db_path, NULL, "SELECT count(*) FROM snapshots"), 2);
    CHECK(access(m.path, F_OK) == 0); /* the newest survives */
    CHECK_INT(count_files(snap_dir, ".tmp"), 0);
end:;
}

/* A damaged database (a zeroed b-tree page) copies page for page; the copy's
 * quick_check fails the snapshot, names the page, leaves no file and prunes
 * no older snapshot of the same database name. */
static void test_damaged_source_keeps_the_older(void)
{
    const char *dir = tly_test_dir();
    char db_path[256], damaged_dir[256], damaged[300], snap_dir[256], err[512];
    tly_snapshot_manifest m, first, second;
    tly_store *store = NULL;
    int64_t page, page_size;
    FILE *f = NULL;

    snprintf(db_path, sizeof(db_path), "%s/state.db", dir);
    snprintf(damaged_dir, sizeof(damaged_dir), "%s/damaged", dir);
    snprintf(damaged, sizeof(damaged), "%s/state.db", damaged_dir);
    snprintf(snap_dir, sizeof(snap_dir), "%s/snapshots", dir);
    CHECK_MSG(tly_store_open(db_path, NULL, &store, err, sizeof(err)) == 0, "%s", err);
    CHECK(sqlite3_exec(tly_store_db(store),
                       "CREATE TABLE filler(x); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL "
                       "SELECT i + 1 FROM n WHERE i < 2000) INSERT INTO filler SELECT "
                       "randomblob(100) FROM n; PRAGMA wal_checkpoint(TRUNCATE)",
                       NULL, NULL, NULL) == SQLITE_OK);
    tly_store_close(store);
    store = NULL;
    CHECK_MSG(tly_snapshot_write(db_path, snap_dir, 2, &first, err, sizeof(err)) == 0, "%s", err);
    usleep(2000);
    CHECK_MSG(tly_snapshot_write(db_path, snap_dir, 2, &second, err, sizeof(err)) == 0, "%s", err);
    /* the copy, with the root page of filler zeroed */
    CHECK(mkdir(damaged_dir, 0755) == 0);
    {
        /* a byte copy: the pages as they are */
        char buf[65536];
        size_t n;
        FILE *in = fopen(db_path, "rb");
        CHECK(in);
        if (!(f = fopen(damaged, "wb")))
            fclose(in);
        CHECK(f);
        while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
            fwrite(buf, 1, n, f);
        fclose(in);
        CHECK(fclose(f) == 0);
        f = NULL;
    }
    page =
        tly_test_scalar(damaged, NULL, "SELECT rootpage FROM sqlite_schema WHERE name = 'filler'");
    page_size = tly_test_scalar(damaged, NULL, "PRAGMA page_size");
    CHECK(page > 1 && page_size >= 512);
    CHECK((f = fopen(damaged, "r+b")) != NULL);
    CHECK(fseek(f, (long)((page - 1) * page_size), SEEK_SET) == 0);
    {
        static const char zeros[65536];
        CHECK(page_size <= (int64_t)sizeof(zeros));
        CHECK(fwrite(zeros, 1, (size_t)page_size, f) == (size_t)page_size);
    }
    CHECK(fclose(f) == 0);
    f = NULL;
    for (int i = 0; i < 3; i++) {
        CHECK(tly_snapshot_write(damaged, snap_dir, 2, &m, err, sizeof(err)) < 0);
        CHECK_MSG(strstr(err, "quick_check") && strstr(err, "Page"), "%s", err);
    }
    CHECK_INT(count_files(snap_dir, ".db"), 2);
    CHECK_INT(count_files(snap_dir, ".json"), 2);
    CHECK(access(first.path, F_OK) == 0);
    CHECK(access(second.path, F_OK) == 0);
    {
        DIR *d = opendir(snap_dir);
        struct dirent *e;
        int hidden = 0;
        CHECK(d);
        while ((e = readdir(d)))
            hidden += e->d_name[0] == '.' && strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
        closedir(d);
        CHECK_INT(hidden, 0); /* no temporary copy, journal or manifest */
    }
end:
    if (f)
        fclose(f);
    if (store)
        tly_store_close(store);
}

static const tly_testcase cases[] = {
    {"snapshot_under_writes_is_exact", test_snapshot_under_writes_is_exact},
    {"corruption_is_detected", test_corruption_is_detected},
    {"keeps_the_newest", test_keeps_the_newest},
    {"damaged_source_keeps_the_older", test_damaged_source_keeps_the_older},
    {NULL, NULL}};

int main(int argc, char **argv)
{
    return tly_test_main(argc, argv, cases);
}
