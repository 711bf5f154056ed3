/* adapters/kafka/recovery.c - bring the state database back before consuming.
 *
 * The order of the sources follows from what each one costs and proves:
 *
 *   database intact     nothing to restore; the changelog gap after its
 *                       recorded offsets is at most one transaction
 *   snapshot            newest first; a manifest names the file, its size and
 *                       checksum, and the changelog offsets inside the copy.
 *                       Manifests come from the compacted <prefix>-snapshots
 *                       topic (keyed by pipeline: survives the loss of the
 *                       whole machine's state directory), from the snapshots
 *                       table of a database that failed its check but still
 *                       reads, and from the snapshot directory (the only
 *                       place older snapshots are listed once the topic is
 *                       compacted). A snapshot that fails its checksum or
 *                       SQLite's check is passed over for the one before it.
 *   changelog topic     compacted, so it holds the latest image of every key:
 *                       replaying all of it rebuilds the whole state, only
 *                       slower than a snapshot plus its tail
 *
 * A database that fails its check is renamed to <db>.failed-<time> (never
 * deleted: it may be wanted for a post-mortem). */
#include "recovery_int.h"
#include "clock.h"

#include "changelog.h"
#include "error.h"
#include "kconf.h"
#include "log.h"
#include "store.h"

#include <errno.h>
#include <json-c/json.h>
#include <librdkafka/rdkafka.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* The local database                                                        */
/* ------------------------------------------------------------------------ */

static bool file_exists(const char *path)
{
    return access(path, F_OK) == 0;
}

/* Whether an SQLite error means the file itself is bad (then it is moved
 * aside and rebuilt) rather than that it cannot be read right now - busy,
 * permissions, I/O - which must stop the start: moving a good database aside
 * because another process held it would throw its state away. */
static bool damaged(int code)
{
    code &= 0xff;
    return code == SQLITE_CORRUPT || code == SQLITE_NOTADB || code == SQLITE_ERROR ||
           code == SQLITE_FORMAT || code == SQLITE_SCHEMA;
}

/* Opens the database read-write (so SQLite recovers its WAL after a crash) and
 * runs its checks. Returns 1 when it passes, 0 when it does not exist, -1 when
 * it is damaged, -2 when it cannot be checked now (why says how). When it
 * passes, reads the changelog offsets it recorded and whether it holds any
 * state. */
static int check_database(const tly_recovery_config *cfg, tly_recovery_report *rep, bool *has_state,
                          char *why, size_t whylen)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *stmt = NULL;
    struct stat st;
    int rc = -1, history;

    *has_state = false;
    if (stat(cfg->db_path, &st) != 0) {
        if (errno == ENOENT)
            return 0;
        snprintf(why, whylen, "%s", strerror(errno));
        return -2;
    }
    if (st.st_size == 0) {
        /* SQLite would take a 0-byte file for a new database. */
        snprintf(why, whylen, "the file is empty");
        return -1;
    }
    if (sqlite3_open_v2(cfg->db_path, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
        snprintf(why, whylen, "cannot open: %s", db ? sqlite3_errmsg(db) : "out of memory");
        rc = db && damaged(sqlite3_extended_errcode(db)) ? -1 : -2;
        goto done;
    }
    sqlite3_busy_timeout(db, 5000);
    /* quick_check reads every page: what a crash or a bad disk left behind
     * shows here, not in the middle of a batch. */
    if (sqlite3_prepare_v2(db, "PRAGMA quick_check", -1, &stmt, NULL) != SQLITE_OK ||
        sqlite3_step(stmt) != SQLITE_ROW) {
        snprintf(why, whylen, "%s", sqlite3_errmsg(db));
        rc = damaged(sqlite3_extended_errcode(db)) ? -1 : -2;
        goto done;
    }
    if (strcmp((const char *)sqlite3_column_text(stmt, 0), "ok") != 0) {
        snprintf(why, whylen, "quick_check: %s", (const char *)sqlite3_column_text(stmt, 0));
        goto done;
    }
    sqlite3_finalize(stmt);
    stmt = NULL;
    if ((history = tly_meta_has_history(db, why, whylen)) < 0 ||
        tly_meta_read_positions(db, TLY_META_CHANGELOG, cfg->topics->changelog.name,
                                rep->start_offsets) < 0)
        goto done;
    *has_state = history == 1;
    rc = 1;
done:
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    return rc;
}

/* Renames the database and its -wal/-shm to <name>.failed-<time>[-wal|-shm]. */
static int move_aside(const char *db_path, tly_recovery_report *rep, char *errbuf, size_t errlen)
{
    static const char *const suffixes[] = {"", "-wal", "-shm"};
    char stamp[32];
    int64_t now = tly_clock_wall_ms();
    time_t seconds = (time_t)(now / 1000);
    struct tm tm;

    gmtime_r(&seconds, &tm);
    strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%S", &tm);
    /* rename() replaces its target: never onto an earlier failed copy. */
    for (int n = 0;; n++) {
        snprintf(rep->moved_aside, sizeof(rep->moved_aside), "%s.failed-%s%03ldZ%s%.0d", db_path,
                 stamp, (long)(now % 1000), n ? "-" : "", n);
        if (!file_exists(rep->moved_aside))
            break;
    }
    for (size_t i = 0; i < sizeof(suffixes) / sizeof(*suffixes); i++) {
        char from[4200], to[4300];
        snprintf(from, sizeof(from), "%s%s", db_path, suffixes[i]);
        snprintf(to, sizeof(to), "%s%s", rep->moved_aside, suffixes[i]);
        if (rename(from, to) != 0 && errno != ENOENT)
            return tly_error(errbuf, errlen, "cannot move %s aside to %s: %s", from, to,
                             strerror(errno));
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Snapshot candidates                                                       */
/* ------------------------------------------------------------------------ */

static void add_candidate(const tly_recovery_config *cfg, tly_recovery_report *rep,
                          const tly_snapshot_manifest *m, const char *source)
{
    const char *base = strrchr(cfg->db_path, '/');
    tly_recovery_candidate *c;

    base = base ? base + 1 : cfg->db_path;
    /* Another database's snapshot in a shared directory is not ours. */
    if (m->database[0] && strcmp(m->database, base) != 0)
        return;
    /* Nor, for a daemon that takes partitions over one by one, another
     * instance's: its partitions come over as they are assigned. */
    if (cfg->by_partition && cfg->instance && m->instance[0] &&
        strcmp(m->instance, cfg->instance) != 0)
        return;
    for (int i = 0; i < rep->candidate_count; i++) {
        c = &rep->candidates[i];
        if (strcmp(c->manifest.snapshot_id, m->snapshot_id) == 0) {
            if (!strstr(c->found_in, source)) {
                size_t n = strlen(c->found_in);
                snprintf(c->found_in + n, sizeof(c->found_in) - n, "+%s", source);
            }
            return;
        }
    }
    if (rep->candidate_count == TLY_RECOVERY_MAX_CANDIDATES)
        return;
    c = &rep->candidates[rep->candidate_count++];
    c->manifest = *m;
    snprintf(c->found_in, sizeof(c->found_in), "%s", source);
    snprintf(c->status, sizeof(c->status), "not tried");
}

struct topic_manifests {
    const tly_recovery_config *cfg;
    tly_recovery_report *rep;
};

static int on_manifest_record(void *ctx, const rd_kafka_message_t *msg, char *errbuf, size_t errlen)
{
    struct topic_manifests *t = ctx;
    tly_snapshot_manifest m;
    char why[512];
    (void)errbuf;
    (void)errlen;
    /* Keyed by pipeline; a NULL value is a tombstone. */
    if (!msg->key || msg->key_len != strlen(t->cfg->pipeline) ||
        memcmp(msg->key, t->cfg->pipeline, msg->key_len) != 0 || !msg->payload)
        return 0;
    if (tly_snapshot_parse_manifest(msg->payload, msg->len, &m, why, sizeof(why)) < 0) {
        tly_log("warn", "bad_manifest", "topic=%s partition=%d offset=%lld error=\"%s\"",
                t->cfg->topics->snapshots.name, (int)msg->partition, (long long)msg->offset, why);
        return 0;
    }
    add_candidate(t->cfg, t->rep, &m, "topic");
    return 0;
}

/* The snapshots table of a database that failed its check may still read. */
static void manifests_from_table(const tly_recovery_config *cfg, tly_recovery_report *rep,
                                 const char *db_path)
{
    tly_snapshot_manifest *list = NULL;
    const char *base = strrchr(cfg->db_path, '/');
    int n = 0;
    char why[256];

    if (tly_snapshot_list_recorded(db_path, &list, &n, why, sizeof(why)) < 0)
        tly_log("warn", "snapshot_table_unreadable", "database=%s error=\"%s\"", db_path, why);
    for (int i = 0; i < n; i++) {
        /* the daemon's database name, whichever copy recorded it */
        snprintf(list[i].database, sizeof(list[i].database), "%s", base ? base + 1 : cfg->db_path);
        add_candidate(cfg, rep, &list[i], "table");
    }
    free(list);
}

static int newest_first(const void *a, const void *b)
{
    return tly_snapshot_newer_first(&((const tly_recovery_candidate *)a)->manifest,
                                    &((const tly_recovery_candidate *)b)->manifest);
}

/* A manifest names its file by an absolute path; a snapshot directory that
 * was moved or mounted elsewhere still holds it under the same name. */
void recovery_locate_file(const tly_recovery_config *cfg, tly_snapshot_manifest *m)
{
    const char *base = strrchr(m->path, '/');
    char moved[4096];
    if (file_exists(m->path) || !cfg->snapshot_dir)
        return;
    if (snprintf(moved, sizeof(moved), "%s/%s", cfg->snapshot_dir, base ? base + 1 : m->path) <
            (int)sizeof(moved) &&
        file_exists(moved))
        snprintf(m->path, sizeof(m->path), "%s", moved);
}

static void gather_candidates(const tly_recovery_config *cfg, tly_recovery_report *rep,
                              const char *failed_db)
{
    struct topic_manifests t = {cfg, rep};
    tly_snapshot_manifest *listed = NULL;
    int n = 0, rc;
    char why[sizeof(rep->snapshot_note) - 1];

    if (cfg->brokers) {
        rc = recovery_read_to_end(cfg, cfg->topics->snapshots.name, NULL, NULL, NULL, NULL,
                                  on_manifest_record, &t, why, sizeof(why));
        if (rc != 0)
            snprintf(rep->snapshot_note, sizeof(rep->snapshot_note), "%s",
                     rc > 0 ? "the snapshots topic does not exist" : why);
        if (rc != 0)
            tly_log("warn", "snapshot_topic_unreadable", "topic=%s error=\"%s\"",
                    cfg->topics->snapshots.name, rep->snapshot_note);
    }
    if (failed_db)
        manifests_from_table(cfg, rep, failed_db);
    if (cfg->snapshot_dir) {
        if (tly_snapshot_list(cfg->snapshot_dir, &listed, &n, why, sizeof(why)) < 0)
            tly_log("warn", "snapshot_dir_unreadable", "error=\"%s\"", why);
        for (int i = 0; i < n; i++)
            add_candidate(cfg, rep, &listed[i], "directory");
        free(listed);
    }
    qsort(rep->candidates, (size_t)rep->candidate_count, sizeof(*rep->candidates), newest_first);
    for (int i = 0; i < rep->candidate_count; i++)
        recovery_locate_file(cfg, &rep->candidates[i].manifest);
}

/* ------------------------------------------------------------------------ */
/* Step 1                                                                    */
/* ------------------------------------------------------------------------ */

int tly_recovery_prepare(const tly_recovery_config *cfg, tly_recovery_report *rep, char *errbuf,
                         size_t errlen)
{
    char why[512];
    bool has_state = false;
    int state;

    memset(rep, 0, sizeof(*rep));
    rep->started_ms = tly_clock_mono_ms();
    rep->chosen = -1;
    rep->history_partitions = -1;
    rep->source = "new";
    for (int p = 0; p < TLY_MAX_PARTITIONS; p++)
        rep->start_offsets[p] = rep->end_offsets[p] = -1;

    state = check_database(cfg, rep, &has_state, why, sizeof(why));
    if (state == -2)
        return tly_error(errbuf, errlen, "cannot check the database %s: %s (it is left as it is)",
                         cfg->db_path, why);
    if (state == 1) {
        snprintf(rep->db_state, sizeof(rep->db_state), "intact");
        rep->source = "local";
        rep->local_has_state = has_state;
        return 0;
    }
    for (int p = 0; p < TLY_MAX_PARTITIONS; p++)
        rep->start_offsets[p] = -1; /* nothing read from a database that failed */
    if (state == 0) {
        snprintf(rep->db_state, sizeof(rep->db_state), "missing");
        /* A -wal without its database would be applied to whatever comes
         * next under that name. */
        for (int i = 0; i < 2; i++) {
            char side[4200];
            snprintf(side, sizeof(side), "%s%s", cfg->db_path, i ? "-shm" : "-wal");
            if (file_exists(side) && !cfg->dry_run) {
                if (move_aside(cfg->db_path, rep, errbuf, errlen) < 0)
                    return -1;
                tly_log("warn", "database_moved_aside",
                        "db=%s to=%s reason=\"-wal or -shm without its database\"", cfg->db_path,
                        rep->moved_aside);
                break;
            }
        }
        gather_candidates(cfg, rep, NULL);
    } else {
        snprintf(rep->db_state, sizeof(rep->db_state), "failed: %s", why);
        tly_log("warn", "database_failed_check", "db=%s error=%s", cfg->db_path,
                tly_log_quote(why, (char[600]){0}, 600));
        gather_candidates(cfg, rep, cfg->db_path);
        if (!cfg->dry_run && move_aside(cfg->db_path, rep, errbuf, errlen) < 0)
            return -1;
        if (rep->moved_aside[0])
            tly_log("warn", "database_moved_aside", "db=%s to=%s", cfg->db_path, rep->moved_aside);
    }

    for (int i = 0; i < rep->candidate_count; i++) {
        tly_recovery_candidate *c = &rep->candidates[i];
        int ok = cfg->dry_run ? tly_snapshot_verify(&c->manifest, why, sizeof(why))
                              : tly_snapshot_restore(&c->manifest, cfg->db_path, why, sizeof(why));
        if (ok < 0) {
            snprintf(c->status, sizeof(c->status), "rejected: %s", why);
            tly_log("warn", "snapshot_rejected", "snapshot=%s error=%s", c->manifest.snapshot_id,
                    tly_log_quote(why, (char[600]){0}, 600));
            continue;
        }
        snprintf(c->status, sizeof(c->status), "%s", cfg->dry_run ? "verifies" : "restored");
        rep->chosen = i;
        rep->source = "snapshot";
        recovery_offsets_from_manifest(&c->manifest, cfg->topics->changelog.name,
                                       rep->start_offsets);
        break;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Step 2                                                                    */
/* ------------------------------------------------------------------------ */

/* Marks in held[] the input partitions the database's partitions table
 * lists; returns how many (0 when none, or no table, or no database). */
static int held_partitions(const char *db_path, unsigned char *held)
{
    sqlite3 *db = NULL;
    int n = 0;

    memset(held, 0, TLY_MAX_PARTITIONS);
    if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK)
        n = tly_partitions_listed(db, held);
    sqlite3_close(db);
    return n;
}

int tly_recovery_replay(const tly_recovery_config *cfg, const char *entity,
                        tly_recovery_report *rep, int64_t *offsets_out, char *errbuf, size_t errlen)
{
    int64_t offsets[TLY_MAX_PARTITIONS];
    struct replay_ctx c = {cfg, entity, rep, NULL, offsets, 0, NULL, {0}};
    unsigned char held[TLY_MAX_PARTITIONS];
    bool in_txn = false;
    int rc = -1, read;

    memcpy(offsets, rep->start_offsets, sizeof(offsets));
    if (!cfg->changelog) {
        rc = 0;
        goto done;
    }
    /* A database that knows which input partitions it holds catches up on
     * those; the others belong to other instances, and a partition assigned
     * later is brought up to date then (tly_recovery_take). One that knows
     * none (new, or restored from a snapshot of such a one) takes all -
     * unless the daemon takes partitions over as they are assigned: then
     * those it has rows of (an offset recorded), and a new one none. */
    rep->held_partitions = held_partitions(cfg->db_path, held);
    if (cfg->by_partition && rep->held_partitions == 0)
        for (int p = 0; p < TLY_MAX_PARTITIONS; p++)
            if ((held[p] = rep->start_offsets[p] >= 0))
                rep->held_partitions++;
    if (cfg->by_partition && rep->held_partitions == 0) {
        rc = 0;
        goto done;
    }
    if (!cfg->dry_run) {
        if (recovery_open_replayer(cfg, entity, &c.replayer, errbuf, errlen) < 0)
            goto done;
        /* a new database: empty tables, their indexes built at the end */
        if (tly_replayer_defer_indexes(c.replayer, errbuf, errlen) < 0 ||
            tly_store_begin(tly_replayer_store(c.replayer), errbuf, errlen) < 0)
            goto done;
        in_txn = true;
    }
    read = recovery_read_to_end(cfg, cfg->topics->changelog.name, rep->start_offsets,
                                rep->held_partitions > 0 ? held : NULL, rep->end_offsets,
                                &rep->changelog_partitions, recovery_on_changelog_record, &c,
                                errbuf, errlen);
    if (read < 0)
        goto done;
    if (in_txn && recovery_replay_commit(&c, errbuf, errlen) < 0)
        goto done;
    in_txn = false;
    if (c.replayer && tly_replayer_finish(c.replayer, errbuf, errlen) < 0)
        goto done;
    if (rep->records_replayed > 0 && rep->chosen < 0 && strcmp(rep->source, "local") != 0)
        rep->source = "changelog";
    rc = 0;
done:
    if (in_txn)
        tly_store_rollback(tly_replayer_store(c.replayer));
    tly_replayer_close(c.replayer);
    if (offsets_out)
        memcpy(offsets_out, offsets, sizeof(offsets));
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Step 3                                                                    */
/* ------------------------------------------------------------------------ */

/* The group's committed offsets on the input topic, one element per
 * partition (offset < 0: none committed); NULL with errbuf on error. An input
 * topic that does not exist gives an empty list. */
static rd_kafka_topic_partition_list_t *committed_input(const tly_recovery_config *cfg,
                                                        char *errbuf, size_t errlen)
{
    rd_kafka_t *rk = tly_kconf_reader(cfg->brokers, cfg->group_id, errbuf, errlen);
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_topic_partition_list_t *list = NULL;
    rd_kafka_resp_err_t err;

    if (!rk)
        return NULL;
    {
        rd_kafka_topic_t *t = rd_kafka_topic_new(rk, cfg->topics->input.name, NULL);
        err = rd_kafka_metadata(rk, 0, t, &md, KAFKA_TIMEOUT_MS);
        rd_kafka_topic_destroy(t);
    }
    if (err || md->topic_cnt != 1) {
        tly_error(errbuf, errlen, "cannot read metadata of %s: %s", cfg->topics->input.name,
                  rd_kafka_err2str(err ? err : RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC));
        goto done;
    }
    list = rd_kafka_topic_partition_list_new(md->topics[0].partition_cnt + 1);
    if (md->topics[0].err)
        goto done; /* no input topic: nothing was ever consumed */
    for (int p = 0; p < md->topics[0].partition_cnt; p++)
        rd_kafka_topic_partition_list_add(list, cfg->topics->input.name, p);
    /* read_committed asks for stable offsets: a crashed member's open
     * transaction holds them back until the broker aborts it
     * (transaction.timeout.ms), so a timeout here is waited out. */
    for (int64_t give_up = tly_clock_mono_ms() + 10 * KAFKA_TIMEOUT_MS;;) {
        if (!(err = rd_kafka_committed(rk, list, KAFKA_TIMEOUT_MS)))
            break;
        if (err != RD_KAFKA_RESP_ERR__TIMED_OUT || tly_clock_mono_ms() > give_up ||
            (cfg->stop && *cfg->stop)) {
            tly_error(errbuf, errlen, "cannot read the committed offsets of group %s: %s",
                      cfg->group_id, rd_kafka_err2str(err));
            rd_kafka_topic_partition_list_destroy(list);
            list = NULL;
            break;
        }
        tly_log("warn", "committed_offsets_wait", "group=%s error=\"%s\"", cfg->group_id,
                rd_kafka_err2str(err));
    }
done:
    if (md)
        rd_kafka_metadata_destroy(md);
    rd_kafka_destroy(rk);
    return list;
}

static void record_in_meta(const tly_recovery_config *cfg, const tly_recovery_report *rep,
                           const rd_kafka_topic_partition_list_t *positions)
{
    tly_store *store = NULL;
    char err[512];
    const char *snapshot =
        rep->chosen >= 0 ? rep->candidates[rep->chosen].manifest.snapshot_id : "";

    if (tly_store_open(cfg->db_path, NULL, &store, err, sizeof(err)) < 0) {
        tly_log("warn", "recovery_meta", "error=\"%s\"", err);
        return;
    }
    /* The last recovery's figures, for SQL and for metrics. */
    if (tly_store_begin(store, err, sizeof(err)) < 0 ||
        tly_store_meta_set_text(store, "recovery.source", rep->source) < 0 ||
        tly_store_meta_set_text(store, "recovery.snapshot", snapshot) < 0 ||
        tly_store_meta_set_int(store, "recovery.ttr_ms", rep->ttr_ms) < 0 ||
        tly_store_meta_set_int(store, "recovery.records_replayed", rep->records_replayed) < 0 ||
        tly_store_meta_set_int(store, "recovery.bytes_replayed", rep->bytes_replayed) < 0 ||
        tly_store_meta_set_int(store, "recovery.at_ms", tly_clock_wall_ms()) < 0 ||
        tly_store_meta_add_int(store, "recovery.count", 1) < 0)
        goto failed;
    for (int i = 0; positions && i < positions->cnt; i++) {
        char key[512];
        if (positions->elems[i].offset < 0)
            continue;
        tly_meta_key_position(TLY_META_INPUT, positions->elems[i].topic,
                              (int)positions->elems[i].partition, key, sizeof(key));
        if (tly_store_meta_set_int(store, key, positions->elems[i].offset) < 0)
            goto failed;
    }
    if (tly_store_commit(store, err, sizeof(err)) < 0) {
    failed:
        tly_store_rollback(store);
        tly_log("warn", "recovery_meta", "error=\"%s\"", sqlite3_errmsg(tly_store_db(store)));
    }
    tly_store_close(store);
}

/* With the changelog off the state catches up by reading the input again
 * from the positions it recorded: how many records that is (the group's
 * committed offsets minus those positions; transaction markers included). */
static int64_t input_behind(const char *db_path, const rd_kafka_topic_partition_list_t *committed)
{
    sqlite3 *db = NULL;
    int64_t behind = 0;

    if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK)
        for (int i = 0; i < committed->cnt; i++) {
            char key[512];
            int64_t recorded;
            tly_meta_key_position(TLY_META_INPUT, committed->elems[i].topic,
                                  (int)committed->elems[i].partition, key, sizeof(key));
            if (tly_meta_get_int(db, key, &recorded) == 1 && committed->elems[i].offset > recorded)
                behind += committed->elems[i].offset - recorded;
        }
    sqlite3_close(db);
    return behind;
}

int tly_recovery_finish(const tly_recovery_config *cfg, tly_recovery_report *rep, char *errbuf,
                        size_t errlen)
{
    bool empty = rep->chosen < 0 && rep->records_replayed == 0 &&
                 !(strcmp(rep->source, "local") == 0 && rep->local_has_state);
    rd_kafka_topic_partition_list_t *committed = NULL;
    char why[512];
    int rc = -1;

    /* After a changelog replay the state stands at the end of the last
     * committed transaction, which is where the group's committed offsets
     * are: those become the positions SQLite records (what --changelog off
     * would resume from, and what people read in meta). */
    /* by_partition: each assigned partition is checked as it is taken over
     * (the daemon refuses one the group consumed that nothing holds), and
     * the positions are the group's. */
    if ((empty || rep->records_replayed > 0 || !cfg->changelog) && cfg->brokers &&
        !cfg->by_partition) {
        if (!(committed = committed_input(cfg, why, sizeof(why)))) {
            tly_error(errbuf, errlen, "cannot read the committed offsets of group %s: %s",
                      cfg->group_id, why);
            goto done;
        }
        rep->history_partitions = 0;
        for (int i = 0; i < committed->cnt; i++)
            if (committed->elems[i].offset > 0)
                rep->history_partitions++;
    }
    if (empty &&
        (rep->history_partitions > 0 || (rep->candidate_count > 0 && !cfg->by_partition)) &&
        !cfg->allow_empty) {
        char snapshots[4500];
        if (rep->candidate_count)
            snprintf(snapshots, sizeof(snapshots),
                     "none of the %d snapshot(s) found verifies (see event=snapshot_rejected)",
                     rep->candidate_count);
        else
            snprintf(snapshots, sizeof(snapshots), "no snapshot was found (topic %s, directory %s)",
                     cfg->topics->snapshots.name, cfg->snapshot_dir ? cfg->snapshot_dir : "-");
        tly_error(errbuf, errlen,
                  "refusing to start with an empty state: the database %s is %s, %s, and %s, "
                  "but %s. Starting empty would silently lose every event before the committed "
                  "offsets. Restore a snapshot (tally restore --snapshot ID|PATH --db %s), or "
                  "start with --allow-empty to accept an empty state",
                  cfg->db_path, rep->db_state, snapshots,
                  cfg->changelog ? "the changelog topic holds no record of this pipeline"
                                 : "the changelog is off (--changelog off)",
                  rep->history_partitions > 0 ? "the consumer group has committed input offsets"
                                              : "snapshots of it existed",
                  cfg->db_path);
        rep->refused = 1;
        goto done;
    }
    if (!cfg->changelog && committed && !empty)
        /* a dry run restored nothing: the chosen snapshot holds the positions */
        rep->input_reread = input_behind(cfg->dry_run && rep->chosen >= 0
                                             ? rep->candidates[rep->chosen].manifest.path
                                             : cfg->db_path,
                                         committed);
    rep->ttr_ms = tly_clock_mono_ms() - rep->started_ms;
    rc = 0;
    if (cfg->dry_run)
        goto done;
    tly_log("info", "recovered",
            "source=%s ttr_ms=%lld records_replayed=%lld bytes_replayed=%lld input_reread=%lld "
            "snapshot=%s db=%s",
            rep->source, (long long)rep->ttr_ms, (long long)rep->records_replayed,
            (long long)rep->bytes_replayed, (long long)rep->input_reread,
            rep->chosen >= 0 ? rep->candidates[rep->chosen].manifest.snapshot_id : "-",
            rep->db_state[0] == 'f' ? "failed" : rep->db_state);
    /* With the changelog off the positions the state recorded (a restored
     * snapshot's among them) are the ones to resume from: left as they are.
     * An empty start (new, or --allow-empty) begins where the group stands. */
    record_in_meta(cfg, rep, cfg->changelog || empty ? committed : NULL);
done:
    if (committed)
        rd_kafka_topic_partition_list_destroy(committed);
    return rc;
}

void tly_recovery_discard(const tly_recovery_config *cfg, const tly_recovery_report *rep)
{
    /* Only a database this recovery created (nothing was intact): left
     * behind, it would pass for an intact one at the next start, and block
     * tally restore into its path. */
    if (!rep->refused || strcmp(rep->db_state, "intact") == 0 || cfg->dry_run)
        return;
    for (int i = 0; i < 3; i++) {
        char path[4200];
        snprintf(path, sizeof(path), "%s%s", cfg->db_path, i == 0 ? "" : i == 1 ? "-wal" : "-shm");
        unlink(path);
    }
}

void tly_recovery_print(const tly_recovery_config *cfg, const tly_recovery_report *rep, FILE *out)
{
    int64_t tail = 0;

    fprintf(out, "database    %s: %s\n", cfg->db_path, rep->db_state);
    if (rep->moved_aside[0])
        fprintf(out, "            moved aside to %s\n", rep->moved_aside);
    if (strcmp(rep->db_state, "intact") != 0) {
        fprintf(out, "snapshots   %d found%s%s\n", rep->candidate_count,
                rep->snapshot_note[0] ? "; " : "", rep->snapshot_note);
        for (int i = 0; i < rep->candidate_count; i++) {
            const tly_recovery_candidate *c = &rep->candidates[i];
            fprintf(out, "  %s %s  last_seq=%lld bytes=%lld from=%s  %s\n",
                    i == rep->chosen ? "*" : " ", c->manifest.snapshot_id,
                    (long long)c->manifest.last_seq, (long long)c->manifest.bytes, c->found_in,
                    c->status);
        }
    }
    if (!cfg->changelog) {
        fprintf(out,
                "changelog   off: the input is read again from the positions the state recorded\n");
        fprintf(out,
                "input       %lld record(s) to read again (up to the group's committed offsets)\n",
                (long long)rep->input_reread);
    } else {
        fprintf(out, "changelog   %s, %d partition(s)\n", cfg->topics->changelog.name,
                rep->changelog_partitions);
        for (int p = 0; p < rep->changelog_partitions && p < TLY_MAX_PARTITIONS; p++) {
            int64_t from = rep->start_offsets[p] + 1;
            fprintf(out, "  [%d] from offset %lld to %lld\n", p, (long long)from,
                    (long long)rep->end_offsets[p]);
            if (rep->end_offsets[p] > from)
                tail += rep->end_offsets[p] - from;
        }
        fprintf(
            out,
            "replay      %lld record(s) of this pipeline, %lld bytes (%lld offsets, transaction markers included)\n",
            (long long)rep->records_replayed, (long long)rep->bytes_replayed, (long long)tail);
    }
    fprintf(out, "source      %s%s%s\n", rep->source, rep->chosen >= 0 ? " " : "",
            rep->chosen >= 0 ? rep->candidates[rep->chosen].manifest.snapshot_id : "");
    fprintf(out, "planned in  %lld ms\n", (long long)rep->ttr_ms);
}
