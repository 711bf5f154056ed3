/* tests/unit/test_derive.c - a pipeline of one's own, @state and @fold
 * (engine/derive.h): one changelog row per changed key per batch, the input
 * partition on every row, the derived replay and emit, the files refused
 * with their line, a changed @state refused, bad events. */
#include "tly_test.h"

#include "pipeline.h"
#include "store.h"

#include <sqlite3.h>
#include <stdint.h>

/* The reference pipeline: page views per page and minute. Its lines:
 *   1-5   @pipeline, @param, @field
 *   6     -- @state
 *   7-12  CREATE TABLE
 *   13    -- @fold
 *   14-16 the upsert */
#define HEADER                                                                                     \
    "-- @pipeline pageviews\n"                                                                     \
    "-- @param window_ms 60000\n"                                                                  \
    "-- @field page     page  text     required\n"                                                 \
    "-- @field user_id  user  id       required\n"                                                 \
    "-- @field event_ms ts    time_ms  required\n"
#define STATE                                                                                      \
    "CREATE TABLE IF NOT EXISTS page_views (\n"                                                    \
    "    page            TEXT    NOT NULL,\n"                                                      \
    "    window_start_ms INTEGER NOT NULL,\n"                                                      \
    "    views           INTEGER NOT NULL,\n"                                                      \
    "    PRIMARY KEY (page, window_start_ms)\n"                                                    \
    ");\n"
#define FOLD                                                                                       \
    "INSERT INTO page_views (page, window_start_ms, views)\n"                                      \
    "VALUES (:page, :event_ms - :event_ms % :window_ms, 1)\n"                                      \
    "ON CONFLICT DO UPDATE SET views = views + 1;\n"
#define REFERENCE HEADER "-- @state\n" STATE "-- @fold\n" FOLD

#define WINDOW_MS 60000
#define BASE_MS 1700000040000LL /* a multiple of WINDOW_MS */
#define PAGES 10
#define WINDOWS 10
#define KEYS (PAGES * WINDOWS) /* key k: page k / WINDOWS, window k % WINDOWS */
#define MAX_BATCH 5000

/* ------------------------------------------------------------------------ */
/* Helpers                                                                   */
/* ------------------------------------------------------------------------ */

/* Writes text to dir/name; path receives the file's path. */
static int write_file(const char *dir, const char *name, const char *text, char *path,
                      size_t path_len)
{
    FILE *f;
    snprintf(path, path_len, "%s/%s", dir, name);
    if (!(f = fopen(path, "w")))
        return -1;
    fputs(text, f);
    return fclose(f) == 0 ? 0 : -1;
}

static tly_store *open_db(const char *dir, const char *name, int disable_triggers)
{
    char path[512], err[512];
    tly_store_options opts;
    tly_store *store = NULL;
    tly_store_options_init(&opts);
    opts.disable_triggers = disable_triggers;
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    if (tly_store_open(path, &opts, &store, err, sizeof(err)) < 0)
        fprintf(stderr, "open %s: %s\n", path, err);
    return store;
}

struct batch {
    size_t n;
    tly_event events[MAX_BATCH];
    tly_event_result results[MAX_BATCH];
    char text[MAX_BATCH][128];
};

/* One page view of key k (page k / WINDOWS in window k % WINDOWS) at `offset`
 * ms into its window; the user id alternates between a JSON integer and a
 * string (an id field takes both). */
static void add_view(struct batch *b, int k, int offset, int partition)
{
    size_t i = b->n++;
    long long ts = BASE_MS + (long long)(k % WINDOWS) * WINDOW_MS + offset % WINDOW_MS;
    if (i % 2)
        snprintf(b->text[i], sizeof(b->text[i]), "{\"page\":\"p%d\",\"user\":%zu,\"ts\":%lld}",
                 k / WINDOWS, i % 53, ts);
    else
        snprintf(b->text[i], sizeof(b->text[i]), "{\"page\":\"p%d\",\"user\":\"u%zu\",\"ts\":%lld}",
                 k / WINDOWS, i % 53, ts);
    b->events[i].data = b->text[i];
    b->events[i].len = strlen(b->text[i]);
    b->events[i].partition = partition;
}

/* Any event text, as is. */
static void add_raw(struct batch *b, const char *text, int partition)
{
    size_t i = b->n++;
    snprintf(b->text[i], sizeof(b->text[i]), "%s", text);
    b->events[i].data = b->text[i];
    b->events[i].len = strlen(b->text[i]);
    b->events[i].partition = partition;
}

static int apply(tly_pipeline *p, struct batch *b, tly_batch_stats *stats)
{
    char err[512];
    if (tly_pipeline_apply(p, b->events, b->n, b->results, stats, err, sizeof(err)) < 0) {
        fprintf(stderr, "apply: %s\n", err);
        return -1;
    }
    return 0;
}

#define query_int(store, sql) tly_test_query_int(tly_store_db(store), sql)
#define query_text(store, sql) tly_test_query_text(tly_store_db(store), sql)

/* The changelog key and after-image of key k with `views` views, as the
 * engine must write them: the primary key columns joined with '#', and a JSON
 * object of the row's own columns in table order. */
static void expected_key(int k, char *buf, size_t len)
{
    snprintf(buf, len, "p%d#%lld", k / WINDOWS, BASE_MS + (long long)(k % WINDOWS) * WINDOW_MS);
}

static void expected_image(int k, int views, char *buf, size_t len)
{
    snprintf(buf, len, "{\"page\":\"p%d\",\"window_start_ms\":%lld,\"views\":%d}", k / WINDOWS,
             BASE_MS + (long long)(k % WINDOWS) * WINDOW_MS, views);
}

/* The key index of a state row, or -1. */
static int key_of(const char *page, int64_t window_start_ms)
{
    int pg;
    int64_t w = (window_start_ms - BASE_MS) / WINDOW_MS;
    if (!page || sscanf(page, "p%d", &pg) != 1 || pg < 0 || pg >= PAGES || w < 0 || w >= WINDOWS ||
        (window_start_ms - BASE_MS) % WINDOW_MS != 0)
        return -1;
    return pg * WINDOWS + (int)w;
}

/* Every row of page_views against counts[] and key_seqs[] (0 = no row).
 * Returns the number of mismatches, each said on stderr. */
static int compare_state(tly_store *store, const int *counts, const int *key_seqs)
{
    sqlite3_stmt *stmt = NULL;
    int bad = 0, rows = 0, expected_rows = 0;
    if (sqlite3_prepare_v2(tly_store_db(store),
                           "SELECT page, window_start_ms, views, key_seq FROM page_views", -1,
                           &stmt, NULL) != SQLITE_OK) {
        fprintf(stderr, "compare_state: %s\n", sqlite3_errmsg(tly_store_db(store)));
        return 1;
    }
    while (sqlite3_step(stmt) == SQLITE_ROW) {
        const char *page = (const char *)sqlite3_column_text(stmt, 0);
        int64_t start = sqlite3_column_int64(stmt, 1);
        int k = key_of(page, start);
        rows++;
        if (k < 0 || sqlite3_column_int(stmt, 2) != counts[k] ||
            sqlite3_column_int(stmt, 3) != key_seqs[k]) {
            fprintf(stderr, "state row %s#%lld: views %d key_seq %d, expected %d and %d\n",
                    page ? page : "NULL", (long long)start, sqlite3_column_int(stmt, 2),
                    sqlite3_column_int(stmt, 3), k < 0 ? -1 : counts[k], k < 0 ? -1 : key_seqs[k]);
            bad++;
        }
    }
    sqlite3_finalize(stmt);
    for (int k = 0; k < KEYS; k++)
        expected_rows += key_seqs[k] > 0;
    if (rows != expected_rows) {
        fprintf(stderr, "page_views has %d rows, expected %d\n", rows, expected_rows);
        bad++;
    }
    return bad;
}

/* The changelog rows with key_seq = key_seq against counts[]: exactly one per
 * key in `keys` (a 0/1 array), each with the expected key and image. */
static int compare_changelog(tly_store *store, int key_seq, const int *keys, const int *counts)
{
    sqlite3_stmt *stmt = NULL;
    int bad = 0, seen[KEYS] = {0};
    char key[64], image[160];
    if (sqlite3_prepare_v2(tly_store_db(store),
                           "SELECT key, image, entity FROM changelog WHERE key_seq = ?1 "
                           "ORDER BY seq",
                           -1, &stmt, NULL) != SQLITE_OK) {
        fprintf(stderr, "compare_changelog: %s\n", sqlite3_errmsg(tly_store_db(store)));
        return 1;
    }
    sqlite3_bind_int(stmt, 1, key_seq);
    while (sqlite3_step(stmt) == SQLITE_ROW) {
        const char *row_key = (const char *)sqlite3_column_text(stmt, 0);
        const char *row_image = (const char *)sqlite3_column_text(stmt, 1);
        const char *entity = (const char *)sqlite3_column_text(stmt, 2);
        int k;
        for (k = 0; k < KEYS; k++) {
            expected_key(k, key, sizeof(key));
            if (strcmp(key, row_key) == 0)
                break;
        }
        if (k == KEYS || !keys[k] || seen[k]++) {
            fprintf(stderr, "changelog key_seq %d: unexpected %s row for key %s\n", key_seq,
                    k < KEYS && seen[k] > 1 ? "second" : "a", row_key);
            bad++;
            continue;
        }
        expected_image(k, counts[k], image, sizeof(image));
        if (strcmp(row_image, image) != 0 || strcmp(entity, "page_views") != 0) {
            fprintf(stderr, "changelog %s key_seq %d: entity %s image %s, expected %s\n", row_key,
                    key_seq, entity, row_image, image);
            bad++;
        }
    }
    sqlite3_finalize(stmt);
    for (int k = 0; k < KEYS; k++)
        if (keys[k] && !seen[k]) {
            expected_key(k, key, sizeof(key));
            fprintf(stderr, "changelog key_seq %d: no row for key %s\n", key_seq, key);
            bad++;
        }
    return bad;
}

/* Rows of a's page_views not in b's (by every column, key_seq and part too). */
static int64_t state_difference(const char *a, const char *b)
{
    return tly_test_scalar(a, b,
                           "SELECT count(*) FROM (SELECT page, window_start_ms, views, key_seq, "
                           "part FROM main.page_views EXCEPT SELECT page, window_start_ms, views, "
                           "key_seq, part FROM other.page_views)");
}

/* Replays every changelog row of page_views in `from` (seq order) with
 * pipeline p; *rows and *changed count them. */
static int replay_all(tly_store *from, tly_pipeline *p, int *rows, int *changed)
{
    sqlite3_stmt *stmt = NULL;
    char err[512];
    int rc = 0;
    *rows = *changed = 0;
    if (sqlite3_prepare_v2(tly_store_db(from),
                           "SELECT image, key_seq, part FROM changelog WHERE entity = "
                           "'page_views' ORDER BY seq",
                           -1, &stmt, NULL) != SQLITE_OK)
        return -1;
    while (rc == 0 && sqlite3_step(stmt) == SQLITE_ROW) {
        int moved = -1;
        rc = tly_pipeline_replay_image(p, (const char *)sqlite3_column_text(stmt, 0),
                                       sqlite3_column_int64(stmt, 1), sqlite3_column_int(stmt, 2),
                                       &moved, err, sizeof(err));
        if (rc < 0)
            fprintf(stderr, "replay: %s\n", err);
        (*rows)++;
        *changed += moved == 1;
    }
    sqlite3_finalize(stmt);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Cases                                                                     */
/* ------------------------------------------------------------------------ */

/* 5000 events over 100 keys in one batch: 100 changelog rows, one per key,
 * each the after-image of the whole row; a second batch over 10 keys: 10
 * more, key_seq 2. */
static void test_coalesces(void)
{
    char dir[64], path[512], err[512];
    struct batch *b = calloc(1, sizeof(*b));
    tly_store *store = NULL;
    tly_pipeline *p = NULL;
    tly_batch_stats stats = {0};
    int counts[KEYS] = {0}, key_seqs[KEYS] = {0}, all[KEYS], touched[KEYS] = {0};
    unsigned rng = 12345;

    snprintf(dir, sizeof(dir), "%s", tly_test_dir());
    CHECK(b);
    CHECK(write_file(dir, "pageviews.sql", REFERENCE, path, sizeof(path)) == 0);
    CHECK((store = open_db(dir, "coalesce.db", 0)) != NULL);
    CHECK_MSG(tly_pipeline_open(store, path, NULL, 0, &p, err, sizeof(err)) == 0, "%s", err);
    CHECK_STR(tly_pipeline_name(p), "pageviews");
    CHECK_STR(tly_pipeline_entity(p), "page_views");

    /* Every key once, then 4900 more spread unevenly (an LCG). */
    for (int i = 0; i < MAX_BATCH; i++) {
        int k = i;
        if (i >= KEYS) {
            rng = rng * 1103515245u + 12345u;
            k = (int)((rng >> 16) % KEYS);
            if (k % 7 == 0) /* some keys get many more */
                k = (k / 7) % 5;
        }
        counts[k]++;
        add_view(b, k, i * 7919, 0);
    }
    for (int k = 0; k < KEYS; k++) {
        all[k] = 1;
        key_seqs[k] = 1;
    }
    CHECK(apply(p, b, &stats) == 0);
    CHECK_INT(stats.applied, MAX_BATCH);
    CHECK_INT(stats.rejected, 0);
    CHECK_INT(stats.changes, KEYS);
    CHECK_INT(query_int(store, "SELECT count(*) FROM changelog"), KEYS);
    CHECK_INT(query_int(store, "SELECT count(*) FROM changelog WHERE key_seq <> 1"), 0);
    CHECK_INT(query_int(store, "SELECT sum(views) FROM page_views"), MAX_BATCH);
    CHECK_INT(compare_state(store, counts, key_seqs), 0);
    CHECK_INT(compare_changelog(store, 1, all, counts), 0);
    /* The image holds the row's own columns only. */
    CHECK_INT(query_int(store, "SELECT count(*) FROM changelog WHERE image ->> '$.key_seq' IS NOT "
                               "NULL OR image ->> '$.part' IS NOT NULL OR (SELECT count(*) FROM "
                               "json_each(image)) <> 3"),
              0);

    /* A second batch: 10 keys, 3 + j events each. */
    b->n = 0;
    for (int j = 0; j < 10; j++) {
        int k = (j * 7 + 3) % KEYS;
        touched[k] = 1;
        key_seqs[k] = 2;
        for (int e = 0; e < 3 + j; e++) {
            counts[k]++;
            add_view(b, k, e * 1000 + 999, 0);
        }
    }
    CHECK(apply(p, b, &stats) == 0);
    CHECK_INT(stats.applied, 3 * 10 + 45);
    CHECK_INT(stats.changes, 10);
    CHECK_INT(query_int(store, "SELECT count(*) FROM changelog"), KEYS + 10);
    CHECK_INT(query_int(store, "SELECT count(*) FROM changelog WHERE key_seq = 2"), 10);
    CHECK_INT(query_int(store, "SELECT count(*) FROM changelog WHERE key_seq = 2 AND seq <= 100"),
              0);
    CHECK_INT(compare_state(store, counts, key_seqs), 0);
    CHECK_INT(compare_changelog(store, 2, touched, counts), 0);
    CHECK_INT(query_int(store, "SELECT count(*) FROM page_views WHERE key_seq = 1"), KEYS - 10);
end:
    tly_pipeline_close(p);
    tly_store_close(store);
    free(b);
}

/* The part column of key k's state row, and of its changelog row at key_seq
 * (-1 when there is none). */
static int64_t state_part(tly_store *store, int k)
{
    char sql[256];
    snprintf(sql, sizeof(sql),
             "SELECT coalesce((SELECT part FROM page_views WHERE page = 'p%d' AND "
             "window_start_ms = %lld), -1)",
             k / WINDOWS, BASE_MS + (long long)(k % WINDOWS) * WINDOW_MS);
    return query_int(store, sql);
}

static int64_t changelog_part(tly_store *store, int k, int key_seq)
{
    char sql[256], key[64];
    expected_key(k, key, sizeof(key));
    snprintf(sql, sizeof(sql),
             "SELECT coalesce((SELECT part FROM changelog WHERE key = '%s' AND key_seq = %d), -1)",
             key, key_seq);
    return query_int(store, sql);
}

/* tly_event.partition lands in the part column of the state row and of its
 * changelog row; a key changed later by another partition moves to it, and
 * within one batch the last event's partition wins. */
static void test_partition(void)
{
    char dir[64], path[512], err[512];
    struct batch *b = calloc(1, sizeof(*b));
    tly_store *store = NULL;
    tly_pipeline *p = NULL;
    tly_batch_stats stats = {0};

    snprintf(dir, sizeof(dir), "%s", tly_test_dir());
    CHECK(b);
    CHECK(write_file(dir, "pageviews.sql", REFERENCE, path, sizeof(path)) == 0);
    CHECK((store = open_db(dir, "partition.db", 0)) != NULL);
    CHECK_MSG(tly_pipeline_open(store, path, NULL, 0, &p, err, sizeof(err)) == 0, "%s", err);

    /* keys 0 and 1 from partition 3 */
    add_view(b, 0, 1, 3);
    add_view(b, 0, 2, 3);
    add_view(b, 1, 3, 3);
    CHECK(apply(p, b, &stats) == 0);
    CHECK_INT(stats.changes, 2);
    CHECK_INT(state_part(store, 0), 3);
    CHECK_INT(state_part(store, 1), 3);
    CHECK_INT(changelog_part(store, 0, 1), 3);
    CHECK_INT(changelog_part(store, 1, 1), 3);
    CHECK_INT(query_int(store, "SELECT count(*) FROM changelog"), 2);

    /* key 0 again, from partition 5: it moves, key 1 stays */
    b->n = 0;
    add_view(b, 0, 4, 5);
    CHECK(apply(p, b, &stats) == 0);
    CHECK_INT(stats.changes, 1);
    CHECK_INT(state_part(store, 0), 5);
    CHECK_INT(state_part(store, 1), 3);
    CHECK_INT(changelog_part(store, 0, 2), 5);
    CHECK_INT(changelog_part(store, 0, 1), 3);

    /* one batch, two partitions on one key: the last event's */
    b->n = 0;
    add_view(b, 2, 5, 3);
    add_view(b, 2, 6, 5);
    add_view(b, 1, 7, 5);
    add_view(b, 1, 8, 3);
    CHECK(apply(p, b, &stats) == 0);
    CHECK_INT(stats.changes, 2);
    CHECK_INT(state_part(store, 2), 5);
    CHECK_INT(changelog_part(store, 2, 1), 5);
    CHECK_INT(state_part(store, 1), 3);
    CHECK_INT(changelog_part(store, 1, 2), 3);
    CHECK_INT(state_part(store, 0), 5);
    /* every state row's part is its newest changelog row's */
    CHECK_INT(query_int(store, "SELECT count(*) FROM page_views s JOIN changelog c ON c.key = "
                               "s.page || '#' || s.window_start_ms AND c.key_seq = s.key_seq "
                               "AND c.part = s.part"),
              3);
end:
    tly_pipeline_close(p);
    tly_store_close(store);
    free(b);
}

/* The derived @replay rebuilds the state from the changelog alone: in a
 * fresh database (the first open creates the table), with the store's
 * triggers off as the replayer has them. An image no newer than the row's
 * changes nothing. */
static void test_replay_round_trip(void)
{
    char dir[64], path[512], err[512], a_path[512], b_path[512];
    struct batch *b = calloc(1, sizeof(*b));
    tly_store *source = NULL, *replica = NULL;
    tly_pipeline *p = NULL, *r = NULL;
    tly_batch_stats stats = {0};
    sqlite3_stmt *stmt = NULL;
    char old_image[256] = "", new_image[256] = "";
    int64_t old_part = -1, new_part = -1, new_seq = 0;
    int rows = 0, changed = 0, moved = -1;

    snprintf(dir, sizeof(dir), "%s", tly_test_dir());
    snprintf(a_path, sizeof(a_path), "%s/source.db", dir);
    snprintf(b_path, sizeof(b_path), "%s/replica.db", dir);
    CHECK(b);
    CHECK(write_file(dir, "pageviews.sql", REFERENCE, path, sizeof(path)) == 0);
    CHECK((source = open_db(dir, "source.db", 0)) != NULL);
    CHECK_MSG(tly_pipeline_open(source, path, NULL, 0, &p, err, sizeof(err)) == 0, "%s", err);
    /* three batches: 50 keys from partitions 0-3, then 20 of them from 7,
     * then 5 from 2 */
    for (int i = 0; i < 500; i++)
        add_view(b, i % 50, i * 13, (i % 50) % 4);
    CHECK(apply(p, b, &stats) == 0);
    CHECK_INT(stats.changes, 50);
    b->n = 0;
    for (int i = 0; i < 100; i++)
        add_view(b, (i % 20) * 2, i, 7);
    CHECK(apply(p, b, &stats) == 0);
    CHECK_INT(stats.changes, 20);
    b->n = 0;
    for (int i = 0; i < 5; i++)
        add_view(b, i * 8, i, 2);
    CHECK(apply(p, b, &stats) == 0);
    CHECK_INT(stats.changes, 5);
    CHECK_INT(query_int(source, "SELECT count(*) FROM changelog"), 75);

    /* A fresh database: the pipeline's first open creates the table. */
    CHECK((replica = open_db(dir, "replica.db", 1)) != NULL);
    CHECK_MSG(
        tly_pipeline_open(replica, path, NULL, TLY_PIPELINE_REPLAY_ONLY, &r, err, sizeof(err)) == 0,
        "%s", err);
    CHECK_INT(query_int(replica, "SELECT count(*) FROM pragma_table_info('page_views')"), 5);
    CHECK_INT(query_int(replica, "SELECT count(*) FROM page_views"), 0);
    CHECK_STR(query_text(replica, "SELECT value FROM meta WHERE key = 'pipeline.pageviews.@state'"),
              STATE);

    CHECK(replay_all(source, r, &rows, &changed) == 0);
    CHECK_INT(rows, 75);
    CHECK_INT(changed, 75);
    CHECK_INT(query_int(replica, "SELECT count(*) FROM page_views"), 50);
    CHECK_INT(query_int(replica, "SELECT sum(views) FROM page_views"), 605);
    CHECK_INT(query_int(replica, "SELECT count(*) FROM changelog"), 0); /* triggers off */
    CHECK_INT(state_difference(a_path, b_path), 0);
    CHECK_INT(state_difference(b_path, a_path), 0);

    /* Replayed again, nothing moves. */
    CHECK(replay_all(source, r, &rows, &changed) == 0);
    CHECK_INT(rows, 75);
    CHECK_INT(changed, 0);

    /* An older image of a key at key_seq 3 (key 0: batches 1, 2 and 3),
     * from another partition, changes nothing; nor does the current one. */
    CHECK(sqlite3_prepare_v2(tly_store_db(source),
                             "SELECT image, part FROM changelog WHERE key = 'p0#1700000040000' "
                             "ORDER BY key_seq",
                             -1, &stmt, NULL) == SQLITE_OK);
    CHECK(sqlite3_step(stmt) == SQLITE_ROW);
    snprintf(old_image, sizeof(old_image), "%s", sqlite3_column_text(stmt, 0));
    old_part = sqlite3_column_int64(stmt, 1);
    while (sqlite3_step(stmt) == SQLITE_ROW) {
        snprintf(new_image, sizeof(new_image), "%s", sqlite3_column_text(stmt, 0));
        new_part = sqlite3_column_int64(stmt, 1);
        new_seq++;
    }
    sqlite3_finalize(stmt);
    stmt = NULL;
    CHECK_INT(new_seq, 2); /* two rows after the first: key_seq 3 */
    CHECK_INT(old_part, 0);
    CHECK_INT(new_part, 2);
    CHECK(strcmp(old_image, new_image) != 0);
    CHECK_MSG(tly_pipeline_replay_image(r, old_image, 1, 6, &moved, err, sizeof(err)) == 0, "%s",
              err);
    CHECK_INT(moved, 0);
    moved = -1;
    CHECK_MSG(tly_pipeline_replay_image(r, old_image, 2, 6, &moved, err, sizeof(err)) == 0, "%s",
              err);
    CHECK_INT(moved, 0);
    moved = -1;
    CHECK_MSG(tly_pipeline_replay_image(r, new_image, 3, 2, &moved, err, sizeof(err)) == 0, "%s",
              err);
    CHECK_INT(moved, 0);
    CHECK_INT(state_difference(a_path, b_path), 0);
    CHECK_INT(state_difference(b_path, a_path), 0);
    CHECK_INT(query_int(replica, "SELECT views FROM page_views WHERE page = 'p0' AND "
                                 "window_start_ms = 1700000040000"),
              query_int(source, "SELECT views FROM page_views WHERE page = 'p0' AND "
                                "window_start_ms = 1700000040000"));
    /* A newer one does move it, to that image's partition. */
    moved = -1;
    CHECK_MSG(tly_pipeline_replay_image(r, old_image, 4, 6, &moved, err, sizeof(err)) == 0, "%s",
              err);
    CHECK_INT(moved, 1);
    CHECK_INT(query_int(replica, "SELECT views * 100 + key_seq * 10 + part FROM page_views WHERE "
                                 "page = 'p0' AND window_start_ms = 1700000040000"),
              10 * 100 + 4 * 10 + 6);
end:
    sqlite3_finalize(stmt);
    tly_pipeline_close(p);
    tly_pipeline_close(r);
    tly_store_close(source);
    tly_store_close(replica);
    free(b);
}

struct records {
    int count;
    char keys[KEYS][64];
    char values[KEYS][256];
};

static int collect(void *ctx, const char *key, size_t key_len, const char *value, size_t value_len)
{
    struct records *r = ctx;
    if (r->count == KEYS || strlen(key) != key_len || strlen(value) != value_len)
        return 1;
    snprintf(r->keys[r->count], sizeof(r->keys[0]), "%s", key);
    snprintf(r->values[r->count], sizeof(r->values[0]), "%s", value);
    r->count++;
    return 0;
}

/* Each record against counts[]: key k's changelog key and image, each key of
 * `keys` exactly once. Returns the mismatches. */
static int compare_records(const struct records *r, const int *keys, const int *counts)
{
    int bad = 0, seen[KEYS] = {0}, want = 0;
    char key[64], image[160];
    for (int i = 0; i < r->count; i++) {
        int k;
        for (k = 0; k < KEYS; k++) {
            expected_key(k, key, sizeof(key));
            if (strcmp(key, r->keys[i]) == 0)
                break;
        }
        if (k == KEYS || !keys[k] || seen[k]++) {
            fprintf(stderr, "emit: unexpected record %s\n", r->keys[i]);
            bad++;
            continue;
        }
        expected_image(k, counts[k], image, sizeof(image));
        if (strcmp(image, r->values[i]) != 0) {
            fprintf(stderr, "emit %s: %s, expected %s\n", r->keys[i], r->values[i], image);
            bad++;
        }
    }
    for (int k = 0; k < KEYS; k++)
        want += keys[k];
    return bad + (r->count != want);
}

/* Without @emit, a batch emits one record per changed key: the changelog
 * key and the after-image. */
static void test_default_emit(void)
{
    char dir[64], path[512], err[512];
    struct batch *b = calloc(1, sizeof(*b));
    struct records *out = calloc(1, sizeof(*out));
    tly_store *store = NULL;
    tly_pipeline *p = NULL;
    tly_batch_stats stats = {0};
    int counts[KEYS] = {0}, keys[KEYS] = {0};
    int64_t from, to;

    snprintf(dir, sizeof(dir), "%s", tly_test_dir());
    CHECK(b && out);
    CHECK(write_file(dir, "pageviews.sql", REFERENCE, path, sizeof(path)) == 0);
    CHECK((store = open_db(dir, "emit.db", 0)) != NULL);
    CHECK_MSG(tly_pipeline_open(store, path, NULL, 0, &p, err, sizeof(err)) == 0, "%s", err);

    for (int i = 0; i < 300; i++) {
        int k = i < 30 ? i : (i * i) % 30; /* 30 keys, unevenly */
        counts[k]++;
        keys[k] = 1;
        add_view(b, k, i, 0);
    }
    from = tly_store_last_seq(store);
    CHECK(apply(p, b, &stats) == 0);
    to = tly_store_last_seq(store);
    CHECK_INT(to - from, 30);
    CHECK_INT(stats.changes, 30);
    CHECK_MSG(tly_pipeline_emit(p, from, to, collect, out, err, sizeof(err)) == 0, "%s", err);
    CHECK_INT(out->count, 30);
    CHECK_INT(compare_records(out, keys, counts), 0);

    /* the next batch's range: its 3 keys only, with their new counts */
    memset(keys, 0, sizeof(keys));
    b->n = 0;
    for (int i = 0; i < 7; i++) {
        static const int three[] = {4, 41, 42}; /* one key of the first batch, two new */
        int k = three[i % 3];
        counts[k]++;
        keys[k] = 1;
        add_view(b, k, 500 + i, 0);
    }
    from = to;
    CHECK(apply(p, b, &stats) == 0);
    to = tly_store_last_seq(store);
    CHECK_INT(stats.changes, 3);
    out->count = 0;
    CHECK_MSG(tly_pipeline_emit(p, from, to, collect, out, err, sizeof(err)) == 0, "%s", err);
    CHECK_INT(out->count, 3);
    CHECK_INT(compare_records(out, keys, counts), 0);

    /* an empty range: nothing */
    out->count = 0;
    CHECK_MSG(tly_pipeline_emit(p, to, to, collect, out, err, sizeof(err)) == 0, "%s", err);
    CHECK_INT(out->count, 0);
end:
    tly_pipeline_close(p);
    tly_store_close(store);
    free(b);
    free(out);
}

struct refusal {
    const char *name;
    const char *text;
    int line;     /* the error names FILE:line: */
    int alt_line; /* or FILE:alt_line: (a section directive's line or its first line), or 0 */
    const char *reason;
    int leaves_nothing; /* a refused @state: no table, nothing in meta */
};

/* Files refused when they open, each with its file, line and reason. */
static void test_refused(void)
{
    static const struct refusal files[] = {
        {"no_primary_key",
         HEADER "-- @state\n"
                "CREATE TABLE IF NOT EXISTS page_views (\n"
                "    page            TEXT    NOT NULL,\n"
                "    window_start_ms INTEGER NOT NULL,\n"
                "    views           INTEGER NOT NULL\n"
                ");\n"
                "-- @fold\n" FOLD,
         7, 0, "table page_views has no PRIMARY KEY", 1},
        {"fold_writes_meta",
         REFERENCE "\n"
                   "INSERT INTO meta (key, value) VALUES ('pageviews.last', :event_ms);\n",
         18, 0, "@fold writes to meta, outside the state table page_views", 0},
        {"fold_deletes", REFERENCE "DELETE FROM page_views WHERE views > 100;\n", 17, 0,
         "@fold deletes rows of page_views", 0},
        {"fold_sets_key_seq",
         HEADER "-- @state\n" STATE "-- @fold\n"
                "INSERT INTO page_views (page, window_start_ms, views)\n"
                "VALUES (:page, :event_ms - :event_ms % :window_ms, 1)\n"
                "ON CONFLICT DO UPDATE SET views = views + 1, key_seq = key_seq + 1;\n",
         14, 0, "@fold sets page_views.key_seq", 0},
        {"fold_sets_part",
         REFERENCE "UPDATE page_views SET part = 0\n"
                   "WHERE page = :page;\n",
         17, 0, "@fold sets page_views.part", 0},
        {"two_state_tables",
         HEADER "-- @state\n" STATE
                "CREATE TABLE IF NOT EXISTS page_users (page TEXT PRIMARY KEY, users INTEGER);\n"
                "-- @fold\n" FOLD,
         7, 0, "@state must create exactly one table (it creates 2)", 1},
        {"state_inserts",
         HEADER "-- @state\n" STATE
                "INSERT INTO page_views (page, window_start_ms, views) VALUES ('home', 0, 0);\n"
                "-- @fold\n" FOLD,
         13, 0, "@state may only create tables, indexes and views", 1},
        {"state_trigger",
         HEADER "-- @state\n" STATE "\n"
                "-- an audit trail\n"
                "CREATE TRIGGER page_views_audit AFTER INSERT ON page_views BEGIN\n"
                "    SELECT 1;\n"
                "END;\n"
                "-- @fold\n" FOLD,
         15, 0, "@state may only create tables, indexes and views", 1},
        {"fold_without_state", HEADER "-- @fold\n" FOLD, 6, 7, "@state", 1},
        {"fold_without_state_with_entity", HEADER "-- @entity page_views\n-- @fold\n" FOLD, 7, 8,
         "@state and @fold go together", 1},
        {"fold_and_stage",
         REFERENCE "-- @stage\n"
                   "SELECT 1;\n",
         17, 18, "drop @stage and @merge", 1},
        {"unknown_directive", HEADER "-- @window 5m\n-- @state\n" STATE "-- @fold\n" FOLD, 6, 0,
         "unknown directive \"-- @window 5m\"", 1},
        {"unknown_field_type",
         "-- @pipeline pageviews\n"
         "-- @param window_ms 60000\n"
         "-- @field page     page  string   required\n"
         "-- @field user_id  user  id       required\n"
         "-- @field event_ms ts    time_ms  required\n"
         "-- @state\n" STATE "-- @fold\n" FOLD,
         3, 0, "@field page: unknown type \"string\"", 1},
        {"two_each",
         HEADER "-- @each item qty items\n-- @each item2 qty2 others\n-- @state\n" STATE
                "-- @fold\n" FOLD,
         7, 0, "@each given twice", 1},
        {"each_bad_path", HEADER "-- @each item qty .\n-- @state\n" STATE "-- @fold\n" FOLD, 6, 0,
         "@each: bad path \".\"", 1},
        {"each_too_many_except",
         HEADER "-- @each item qty items except a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q,r,s,t,u,v,w,x,y,"
                "z,aa,ab,ac,ad,ae,af,ag,ah\n-- @state\n" STATE "-- @fold\n" FOLD,
         6, 0, "@each: too many except names", 1},
        {"own_key_seq",
         HEADER "-- @state\n"
                "CREATE TABLE IF NOT EXISTS page_views (\n"
                "    page            TEXT    NOT NULL,\n"
                "    window_start_ms INTEGER NOT NULL,\n"
                "    views           INTEGER NOT NULL,\n"
                "    key_seq         INTEGER,\n"
                "    PRIMARY KEY (page, window_start_ms)\n"
                ");\n"
                "-- @fold\n" FOLD,
         7, 0, "table page_views has a column named key_seq", 1},
    };
    char dir[64], path[512], db_name[128], err[1024], want[600], alt[600];
    tly_store *store = NULL;
    tly_pipeline *p = NULL;
    int failed = 0;

    snprintf(dir, sizeof(dir), "%s", tly_test_dir());
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        const struct refusal *f = &files[i];
        char name[128];
        int rc;
        snprintf(name, sizeof(name), "%s.sql", f->name);
        snprintf(db_name, sizeof(db_name), "%s.db", f->name);
        CHECK(write_file(dir, name, f->text, path, sizeof(path)) == 0);
        CHECK((store = open_db(dir, db_name, 0)) != NULL);
        snprintf(err, sizeof(err), "(no error)");
        rc = tly_pipeline_open(store, path, NULL, 0, &p, err, sizeof(err));
        snprintf(want, sizeof(want), "%s:%d: ", path, f->line);
        snprintf(alt, sizeof(alt), "%s:%d: ", path, f->alt_line);
        if (rc == 0) {
            fprintf(stderr, "refused %s: opened\n", f->name);
            failed++;
        } else if (!(strstr(err, want) || (f->alt_line && strstr(err, alt))) ||
                   !strstr(err, f->reason)) {
            fprintf(stderr, "refused %s: \"%s\"; expected \"%s\"%s%s%s and \"%s\"\n", f->name, err,
                    want, f->alt_line ? " or \"" : "", f->alt_line ? alt : "",
                    f->alt_line ? "\"" : "", f->reason);
            failed++;
        } else if (f->leaves_nothing &&
                   (query_int(store, "SELECT count(*) FROM sqlite_schema WHERE name IN "
                                     "('page_views', 'page_users')") != 0 ||
                    query_int(store, "SELECT count(*) FROM meta WHERE key LIKE "
                                     "'pipeline.pageviews.%'") != 0)) {
            fprintf(stderr, "refused %s: left a table or meta behind\n", f->name);
            failed++;
        }
        tly_pipeline_close(p);
        p = NULL;
        tly_store_close(store);
        store = NULL;
    }
    CHECK_INT(failed, 0);
end:
    tly_pipeline_close(p);
    tly_store_close(store);
}

/* A database keeps the @state it was built with: another is refused, the
 * same opens again. */
static void test_schema_changed(void)
{
    static const char changed[] = HEADER "-- @state\n"
                                         "CREATE TABLE IF NOT EXISTS page_views (\n"
                                         "    page            TEXT    NOT NULL,\n"
                                         "    window_start_ms INTEGER NOT NULL,\n"
                                         "    views           INTEGER NOT NULL,\n"
                                         "    last_user       TEXT,\n"
                                         "    PRIMARY KEY (page, window_start_ms)\n"
                                         ");\n"
                                         "-- @fold\n" FOLD;
    char dir[64], path[512], changed_path[512], err[1024], want[600], recorded[1024];
    struct batch *b = calloc(1, sizeof(*b));
    tly_store *store = NULL;
    tly_pipeline *p = NULL;
    tly_batch_stats stats = {0};

    snprintf(dir, sizeof(dir), "%s", tly_test_dir());
    CHECK(b);
    CHECK(write_file(dir, "pageviews.sql", REFERENCE, path, sizeof(path)) == 0);
    CHECK(write_file(dir, "changed.sql", changed, changed_path, sizeof(changed_path)) == 0);
    CHECK((store = open_db(dir, "schema.db", 0)) != NULL);
    CHECK_MSG(tly_pipeline_open(store, path, NULL, 0, &p, err, sizeof(err)) == 0, "%s", err);
    add_view(b, 0, 1, 0);
    CHECK(apply(p, b, &stats) == 0);
    CHECK_INT(stats.changes, 1);
    tly_pipeline_close(p);
    p = NULL;
    tly_store_close(store);

    CHECK((store = open_db(dir, "schema.db", 0)) != NULL);
    snprintf(err, sizeof(err), "(no error)");
    CHECK(tly_pipeline_open(store, changed_path, NULL, 0, &p, err, sizeof(err)) < 0);
    snprintf(want, sizeof(want), "%s:7: @state differs", changed_path);
    CHECK_MSG(strstr(err, want) != NULL, "\"%s\" lacks \"%s\"", err, want);
    CHECK_MSG(strstr(err, "pipeline.pageviews.@state") != NULL, "%s", err);
    CHECK_INT(query_int(store, "SELECT count(*) FROM pragma_table_info('page_views')"), 5);

    CHECK_MSG(tly_pipeline_open(store, path, NULL, 0, &p, err, sizeof(err)) == 0, "%s", err);
    CHECK_INT(
        tly_store_meta_get_text(store, "pipeline.pageviews.@state", recorded, sizeof(recorded)), 1);
    CHECK_STR(recorded, STATE);
    b->n = 0;
    add_view(b, 0, 2, 0);
    CHECK(apply(p, b, &stats) == 0);
    CHECK_INT(stats.changes, 1);
    CHECK_INT(query_int(store, "SELECT views * 10 + key_seq FROM page_views"), 22);
end:
    tly_pipeline_close(p);
    tly_store_close(store);
    free(b);
}

/* A bad event is rejected with its reason and changes nothing; a constraint
 * of the state table that fails in @fold rejects only that event of its
 * batch. */
static void test_bad_event(void)
{
    static const char checked[] = HEADER "-- @state\n"
                                         "CREATE TABLE IF NOT EXISTS page_views (\n"
                                         "    page            TEXT    NOT NULL CHECK "
                                         "(length(page) <= 10),\n"
                                         "    window_start_ms INTEGER NOT NULL,\n"
                                         "    views           INTEGER NOT NULL,\n"
                                         "    PRIMARY KEY (page, window_start_ms)\n"
                                         ");\n"
                                         "-- @fold\n" FOLD;
    char dir[64], path[512], checked_path[512], err[512];
    struct batch *b = calloc(1, sizeof(*b));
    tly_store *store = NULL, *store2 = NULL;
    tly_pipeline *p = NULL, *q = NULL;
    tly_batch_stats stats = {0};

    snprintf(dir, sizeof(dir), "%s", tly_test_dir());
    CHECK(b);
    CHECK(write_file(dir, "pageviews.sql", REFERENCE, path, sizeof(path)) == 0);
    CHECK(write_file(dir, "checked.sql", checked, checked_path, sizeof(checked_path)) == 0);
    CHECK((store = open_db(dir, "bad.db", 0)) != NULL);
    CHECK_MSG(tly_pipeline_open(store, path, NULL, 0, &p, err, sizeof(err)) == 0, "%s", err);

    /* alone: nothing changes */
    add_raw(b, "{\"page\":\"home\",\"ts\":1700000040000}", 0);
    CHECK(apply(p, b, &stats) == 0);
    CHECK_INT(b->results[0].status, TLY_EVENT_REJECTED);
    CHECK_STR(b->results[0].reason, "missing field \"user\"");
    CHECK_INT(stats.rejected, 1);
    CHECK_INT(stats.applied, 0);
    CHECK_INT(stats.changes, 0);
    CHECK_INT(query_int(store, "SELECT count(*) FROM page_views"), 0);
    CHECK_INT(query_int(store, "SELECT count(*) FROM changelog"), 0);

    /* among good ones: only it is rejected, the batch still coalesces */
    b->n = 0;
    add_raw(b, "{\"page\":\"home\",\"user\":1,\"ts\":1700000040000}", 0);
    add_raw(b, "{\"page\":\"home\",\"user\":2}", 0);
    add_raw(b, "{\"page\":\"home\",\"user\":3,\"ts\":1700000040001}", 0);
    add_raw(b, "{\"page\":\"home\",\"user\":3,\"ts\":-5}", 0);
    add_raw(b, "{\"page\":\"about\",\"user\":4,\"ts\":1700000099999}", 0);
    add_raw(b, "{\"page\":", 0);
    CHECK(apply(p, b, &stats) == 0);
    CHECK_INT(b->results[0].status, TLY_EVENT_APPLIED);
    CHECK_INT(b->results[1].status, TLY_EVENT_REJECTED);
    CHECK_STR(b->results[1].reason, "missing field \"ts\"");
    CHECK_INT(b->results[2].status, TLY_EVENT_APPLIED);
    CHECK_INT(b->results[3].status, TLY_EVENT_REJECTED);
    CHECK_MSG(strstr(b->results[3].reason, "field \"ts\" is -5") != NULL, "%s",
              b->results[3].reason);
    CHECK_INT(b->results[4].status, TLY_EVENT_APPLIED);
    CHECK_INT(b->results[5].status, TLY_EVENT_REJECTED);
    CHECK_MSG(strstr(b->results[5].reason, "invalid JSON") != NULL, "%s", b->results[5].reason);
    CHECK_INT(stats.applied, 3);
    CHECK_INT(stats.rejected, 3);
    CHECK_INT(stats.changes, 2);
    CHECK_INT(query_int(store, "SELECT views FROM page_views WHERE page = 'home'"), 2);
    CHECK_INT(query_int(store, "SELECT views FROM page_views WHERE page = 'about'"), 1);
    CHECK_INT(query_int(store, "SELECT count(*) FROM page_views"), 2);

    /* A CHECK of the state table fails in @fold: the batch is redone one
     * event at a time (each with its own merge) and only that event is
     * rejected. */
    CHECK((store2 = open_db(dir, "checked.db", 0)) != NULL);
    CHECK_MSG(tly_pipeline_open(store2, checked_path, NULL, 0, &q, err, sizeof(err)) == 0, "%s",
              err);
    b->n = 0;
    add_raw(b, "{\"page\":\"home\",\"user\":1,\"ts\":1700000040000}", 0);
    add_raw(b, "{\"page\":\"home\",\"user\":2,\"ts\":1700000040001}", 0);
    add_raw(b, "{\"page\":\"a-very-long-page\",\"user\":3,\"ts\":1700000040002}", 0);
    add_raw(b, "{\"page\":\"home\",\"user\":4,\"ts\":1700000040003}", 0);
    add_raw(b, "{\"page\":\"about\",\"user\":5,\"ts\":1700000040004}", 0);
    CHECK(apply(q, b, &stats) == 0);
    CHECK_INT(b->results[0].status, TLY_EVENT_APPLIED);
    CHECK_INT(b->results[1].status, TLY_EVENT_APPLIED);
    CHECK_INT(b->results[2].status, TLY_EVENT_REJECTED);
    CHECK_MSG(strstr(b->results[2].reason, "CHECK constraint failed") != NULL, "%s",
              b->results[2].reason);
    CHECK_INT(b->results[3].status, TLY_EVENT_APPLIED);
    CHECK_INT(b->results[4].status, TLY_EVENT_APPLIED);
    CHECK_INT(stats.applied, 4);
    CHECK_INT(stats.rejected, 1);
    CHECK_INT(query_int(store2, "SELECT views FROM page_views WHERE page = 'home'"), 3);
    CHECK_INT(query_int(store2, "SELECT views FROM page_views WHERE page = 'about'"), 1);
    CHECK_INT(query_int(store2, "SELECT count(*) FROM page_views"), 2);
    CHECK_INT(stats.changes, 4); /* one merge per event when redone */
    CHECK_INT(query_int(store2, "SELECT count(*) FROM changelog"), 4);
    CHECK_INT(query_int(store2, "SELECT count(*) FROM changelog WHERE key LIKE 'a-very%'"), 0);
    /* the newest changelog row of each key is its state row */
    CHECK_INT(query_int(store2, "SELECT count(*) FROM page_views s JOIN changelog c ON c.key = "
                                "s.page || '#' || s.window_start_ms AND c.key_seq = s.key_seq "
                                "AND c.image = json_object('page', s.page, 'window_start_ms', "
                                "s.window_start_ms, 'views', s.views)"),
              2);
end:
    tly_pipeline_close(p);
    tly_pipeline_close(q);
    tly_store_close(store);
    tly_store_close(store2);
    free(b);
}

/* What a file says of itself, without a database. */
static void test_describe(void)
{
    char dir[64], path[512], topics_path[512], err[512];
    tly_pipeline_info info;

    snprintf(dir, sizeof(dir), "%s", tly_test_dir());
    CHECK(write_file(dir, "pageviews.sql", REFERENCE, path, sizeof(path)) == 0);
    CHECK(write_file(dir, "topics.sql",
                     HEADER "-- @input web.pageviews\n"
                            "-- @output web.pageviews_per_minute\n"
                            "-- @state\n" STATE "-- @fold\n" FOLD,
                     topics_path, sizeof(topics_path)) == 0);

    CHECK_MSG(tly_pipeline_describe(path, &info, err, sizeof(err)) == 0, "%s", err);
    CHECK_STR(info.name, "pageviews");
    CHECK_STR(info.source, path);
    CHECK(info.derived);
    CHECK(!info.builtin);
    CHECK_STR(info.input_topic, "");
    CHECK_STR(info.output_topic, "");

    CHECK_MSG(tly_pipeline_describe(topics_path, &info, err, sizeof(err)) == 0, "%s", err);
    CHECK_STR(info.name, "pageviews");
    CHECK(info.derived);
    CHECK(!info.builtin);
    CHECK_STR(info.input_topic, "web.pageviews");
    CHECK_STR(info.output_topic, "web.pageviews_per_minute");

    CHECK_MSG(tly_pipeline_describe("orders", &info, err, sizeof(err)) == 0, "%s", err);
    CHECK_STR(info.name, "orders");
    CHECK_STR(info.source, "sql/orders.sql");
    CHECK(info.builtin);
    CHECK(!info.derived);

    /* the directives are checked, the SQL is not */
    CHECK(write_file(dir, "typo.sql", HEADER "-- @stat\n" STATE "-- @fold\n" FOLD, path,
                     sizeof(path)) == 0);
    CHECK(tly_pipeline_describe(path, &info, err, sizeof(err)) < 0);
    CHECK_MSG(strstr(err, ":6: unknown directive") != NULL, "%s", err);
end:;
}

/* ------------------------------------------------------------------------ */
/* Files the checks let through                                              */
/* ------------------------------------------------------------------------ */

/* @state as a plain CREATE TABLE (no IF NOT EXISTS) opens again on the
 * database it built. */
static void test_plain_create_reopens(void)
{
    char dir[64], path[512], err[512];
    tly_store *store = NULL;
    tly_pipeline *p = NULL;

    snprintf(dir, sizeof(dir), "%s", tly_test_dir());
    CHECK(write_file(dir, "plain.sql",
                     HEADER "-- @state\n"
                            "CREATE TABLE page_views (\n"
                            "    page            TEXT    NOT NULL,\n"
                            "    window_start_ms INTEGER NOT NULL,\n"
                            "    views           INTEGER NOT NULL,\n"
                            "    PRIMARY KEY (page, window_start_ms)\n"
                            ");\n"
                            "-- @fold\n" FOLD,
                     path, sizeof(path)) == 0);
    CHECK((store = open_db(dir, "plain.db", 0)) != NULL);
    CHECK_MSG(tly_pipeline_open(store, path, NULL, 0, &p, err, sizeof(err)) == 0, "%s", err);
    tly_pipeline_close(p);
    p = NULL;
    tly_store_close(store);
    CHECK((store = open_db(dir, "plain.db", 0)) != NULL);
    CHECK_MSG(tly_pipeline_open(store, path, NULL, 0, &p, err, sizeof(err)) == 0, "second open: %s",
              err);
end:
    tly_pipeline_close(p);
    tly_store_close(store);
}

/* Runs `fold` (on line 14) over `batches` batches of one event of key 0,
 * then replays the changelog into a fresh database: either the file is
 * refused with its line, or the replica equals the state (and with
 * count_key_seq, key_seq counts the batches). */
static void fold_round_trip(const char *fold, const char *db_name, int batches, int count_key_seq)
{
    char dir[64], text[2048], path[512], err[512], want[600], a_path[512], b_path[512];
    struct batch *b = calloc(1, sizeof(*b));
    tly_store *source = NULL, *replica = NULL;
    tly_pipeline *p = NULL, *r = NULL;
    tly_batch_stats stats = {0};
    int rows = 0, changed = 0;

    snprintf(dir, sizeof(dir), "%s", tly_test_dir());
    snprintf(text, sizeof(text), "%s-- @state\n%s-- @fold\n%s", HEADER, STATE, fold);
    snprintf(a_path, sizeof(a_path), "%s/%s", dir, db_name);
    snprintf(b_path, sizeof(b_path), "%s/replica.db", dir);
    CHECK(b);
    CHECK(write_file(dir, "fold.sql", text, path, sizeof(path)) == 0);
    CHECK((source = open_db(dir, db_name, 0)) != NULL);
    if (tly_pipeline_open(source, path, NULL, 0, &p, err, sizeof(err)) < 0) {
        snprintf(want, sizeof(want), "%s:14: @fold", path);
        CHECK_MSG(strstr(err, want) != NULL, "refused without its place: %s", err);
        goto end;
    }
    for (int n = 0; n < batches; n++) {
        b->n = 0;
        add_view(b, 0, n, 0);
        CHECK(apply(p, b, &stats) == 0);
        CHECK_INT(stats.applied, 1);
    }
    if (count_key_seq)
        CHECK_INT(query_int(source, "SELECT max(key_seq) FROM page_views"), batches);
    CHECK((replica = open_db(dir, "replica.db", 1)) != NULL);
    CHECK_MSG(
        tly_pipeline_open(replica, path, NULL, TLY_PIPELINE_REPLAY_ONLY, &r, err, sizeof(err)) == 0,
        "%s", err);
    CHECK(replay_all(source, r, &rows, &changed) == 0);
    CHECK_INT(state_difference(a_path, b_path), 0);
    CHECK_INT(state_difference(b_path, a_path), 0);
end:
    tly_pipeline_close(p);
    tly_pipeline_close(r);
    tly_store_close(source);
    tly_store_close(replica);
    free(b);
}

/* INSERT OR REPLACE deletes the old row: key_seq must not start again. */
static void test_fold_replace(void)
{
    fold_round_trip("INSERT OR REPLACE INTO page_views (page, window_start_ms, views)\n"
                    "VALUES (:page, :event_ms - :event_ms % :window_ms,\n"
                    "        coalesce((SELECT views FROM page_views WHERE page = :page AND\n"
                    "                  window_start_ms = :event_ms - :event_ms % :window_ms), 0) "
                    "+ 1);\n",
                    "replace.db", 3, 1);
}

/* An update of a primary key column moves a row to another key: the old key
 * must not stay behind in a replica. */
static void test_fold_moves_key(void)
{
    fold_round_trip("INSERT INTO page_views (page, window_start_ms, views)\n"
                    "VALUES (:page, :event_ms - :event_ms % :window_ms, 1)\n"
                    "ON CONFLICT DO UPDATE SET views = views + 1, page = page || '+';\n",
                    "moves.db", 2, 0);
}

/* Two @state/@fold pipelines on one store: each writes its changelog. */
static void test_two_pipelines_one_store(void)
{
    char dir[64], path[512], hits_path[512], err[512];
    struct batch *b = calloc(1, sizeof(*b));
    tly_store *store = NULL;
    tly_pipeline *p = NULL, *q = NULL;
    tly_batch_stats stats = {0};

    snprintf(dir, sizeof(dir), "%s", tly_test_dir());
    CHECK(b);
    CHECK(write_file(dir, "pageviews.sql", REFERENCE, path, sizeof(path)) == 0);
    CHECK(write_file(dir, "pagehits.sql",
                     "-- @pipeline pagehits\n"
                     "-- @field page page text required\n"
                     "-- @state\n"
                     "CREATE TABLE IF NOT EXISTS page_hits (page TEXT PRIMARY KEY, hits "
                     "INTEGER NOT NULL);\n"
                     "-- @fold\n"
                     "INSERT INTO page_hits (page, hits) VALUES (:page, 1)\n"
                     "ON CONFLICT DO UPDATE SET hits = hits + 1;\n",
                     hits_path, sizeof(hits_path)) == 0);
    CHECK((store = open_db(dir, "two.db", 0)) != NULL);
    CHECK_MSG(tly_pipeline_open(store, path, NULL, 0, &p, err, sizeof(err)) == 0, "%s", err);
    CHECK_MSG(tly_pipeline_open(store, hits_path, NULL, 0, &q, err, sizeof(err)) == 0, "%s", err);
    add_view(b, 0, 1, 4);
    CHECK(apply(q, b, &stats) == 0);
    CHECK_INT(stats.changes, 1);
    CHECK(apply(p, b, &stats) == 0);
    CHECK_INT(stats.applied, 1);
    CHECK_INT(stats.changes, 1);
    CHECK_INT(query_int(store, "SELECT key_seq * 10 + part FROM page_views"), 14);
    CHECK_INT(query_int(store, "SELECT count(*) FROM changelog WHERE entity = 'page_views'"), 1);
end:
    tly_pipeline_close(p);
    tly_pipeline_close(q);
    tly_store_close(store);
    free(b);
}

static const tly_testcase cases[] = {{"coalesces", test_coalesces},
                                     {"partition", test_partition},
                                     {"replay_round_trip", test_replay_round_trip},
                                     {"default_emit", test_default_emit},
                                     {"refused", test_refused},
                                     {"schema_changed", test_schema_changed},
                                     {"bad_event", test_bad_event},
                                     {"describe", test_describe},
                                     {"plain_create_reopens", test_plain_create_reopens},
                                     {"fold_replace", test_fold_replace},
                                     {"fold_moves_key", test_fold_moves_key},
                                     {"two_pipelines_one_store", test_two_pipelines_one_store},
                                     {NULL, NULL}};

int main(int argc, char **argv)
{
    return tly_test_main(argc, argv, cases);
}
