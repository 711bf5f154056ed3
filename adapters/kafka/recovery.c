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
#include "recovery.h"
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

#define KAFKA_TIMEOUT_MS 30000
#define REPLAY_COMMIT_EVERY 50000 /* records per SQLite transaction during replay */

/* rd_kafka_query_watermark_offsets, waiting out what a topic created a
 * moment ago answers until its partitions have a leader (up to
 * KAFKA_TIMEOUT_MS): not-leader, leader-not-available, and, when
 * unknown_is_new, unknown-topic. Returns librdkafka's error or 0. */
static rd_kafka_resp_err_t query_watermarks(rd_kafka_t *rk, const char *topic, int partition,
                                            bool unknown_is_new, int64_t *low, int64_t *high)
{
    rd_kafka_resp_err_t err;
    for (int64_t give_up = tly_clock_mono_ms() + KAFKA_TIMEOUT_MS;;) {
        err = rd_kafka_query_watermark_offsets(rk, topic, partition, low, high, KAFKA_TIMEOUT_MS);
        if (!(err == RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION ||
              err == RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE ||
              (unknown_is_new && err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)) ||
            tly_clock_mono_ms() > give_up)
            return err;
        tly_log("info", "waiting_for_leader", "topic=%s partition=%d error=\"%s\"", topic,
                partition, rd_kafka_err2str(err));
        usleep(200000);
    }
}

/* "<topic>.<partition>" -> partition, if topic matches; else -1. */
static int offset_key_partition(const char *key, const char *topic)
{
    size_t n = strlen(topic);
    char *end;
    long p;
    if (strncmp(key, topic, n) != 0 || key[n] != '.' || !key[n + 1])
        return -1;
    p = strtol(key + n + 1, &end, 10);
    return *end || p < 0 || p >= TLY_MAX_PARTITIONS ? -1 : (int)p;
}

/* Fills start_offsets from a manifest's lastChangelogOffset object. */
static void offsets_from_manifest(const tly_snapshot_manifest *m, const char *topic,
                                  int64_t *offsets)
{
    json_object *obj = json_tokener_parse(m->changelog_offsets);
    if (!obj)
        return;
    json_object_object_foreach(obj, key, value)
    {
        int p = offset_key_partition(key, topic);
        if (p >= 0 && json_object_is_type(value, json_type_int))
            offsets[p] = json_object_get_int64(value);
    }
    json_object_put(obj);
}

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
    struct timespec ts;
    struct tm tm;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%S", &tm);
    /* rename() replaces its target: never onto an earlier failed copy. */
    for (int n = 0;; n++) {
        snprintf(rep->moved_aside, sizeof(rep->moved_aside), "%s.failed-%s%03ldZ%s%.0d", db_path,
                 stamp, ts.tv_nsec / 1000000, n ? "-" : "", n);
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
/* Reading a topic to its end                                                */
/* ------------------------------------------------------------------------ */

typedef int (*message_fn)(void *ctx, const rd_kafka_message_t *m, char *errbuf, size_t errlen);

/* Reads every partition of topic (only those set in `only`, when not NULL)
 * from after[p] + 1 (after NULL or after[p] < 0: from the start) up to the end
 * the partition has when the read begins, read_committed, passing each
 * message to fn. end_out (may be NULL) gets the high watermarks,
 * *partitions_out the partition count. Returns 0, 1 when the topic does not
 * exist, or -1 with errbuf. */
static int read_to_end(const tly_recovery_config *cfg, const char *topic, const int64_t *after,
                       const unsigned char *only, int64_t *end_out, int *partitions_out,
                       message_fn fn, void *ctx, char *errbuf, size_t errlen)
{
    rd_kafka_t *rk = tly_kconf_reader(cfg->brokers, NULL, errbuf, errlen);
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_topic_partition_list_t *assignment = rd_kafka_topic_partition_list_new(8);
    bool done[TLY_MAX_PARTITIONS] = {false};
    int partitions = 0, remaining = 0, rc = -1;

    if (!rk)
        goto out;
    {
        rd_kafka_topic_t *t = rd_kafka_topic_new(rk, topic, NULL);
        rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 0, t, &md, KAFKA_TIMEOUT_MS);
        rd_kafka_topic_destroy(t);
        if (!err && md->topic_cnt == 1 &&
            md->topics[0].err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) {
            rc = 1;
            goto out;
        }
        if (err || md->topic_cnt != 1 || md->topics[0].err) {
            tly_error(errbuf, errlen, "cannot read metadata of %s: %s", topic,
                      rd_kafka_err2str(err ? err
                                       : md->topic_cnt == 1 ? md->topics[0].err
                                                            : RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC));
            goto out;
        }
        partitions = md->topics[0].partition_cnt;
    }
    if (partitions > TLY_MAX_PARTITIONS) {
        tly_error(errbuf, errlen, "%s has %d partitions; at most %d are supported", topic,
                  partitions, TLY_MAX_PARTITIONS);
        goto out;
    }
    for (int p = 0; p < partitions; p++) {
        int64_t low, high, next;
        rd_kafka_resp_err_t err;
        if (only && !only[p])
            continue;
        /* the topic exists (metadata above): "unknown" is one created a
         * moment ago */
        if ((err = query_watermarks(rk, topic, p, true, &low, &high))) {
            tly_error(errbuf, errlen, "cannot read offsets of %s [%d]: %s", topic, p,
                      rd_kafka_err2str(err));
            goto out;
        }
        if (end_out)
            end_out[p] = high;
        next = after && after[p] >= 0 ? after[p] + 1 : 0;
        if (next < low)
            next = low;
        if (next < high) {
            rd_kafka_topic_partition_list_add(assignment, topic, p)->offset = next;
            remaining++;
        }
    }
    if (remaining) {
        rd_kafka_resp_err_t err = rd_kafka_assign(rk, assignment);
        if (err) {
            tly_error(errbuf, errlen, "cannot read %s: %s", topic, rd_kafka_err2str(err));
            goto out;
        }
    }
    while (remaining > 0) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 1000);
        if (cfg->stop && *cfg->stop) {
            if (m)
                rd_kafka_message_destroy(m);
            tly_error(errbuf, errlen, "stopped during recovery");
            goto out;
        }
        if (!m)
            continue;
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            /* End-of-partition can come more than once for one partition;
             * with read_committed it comes at the last stable offset. */
            if (m->partition >= 0 && m->partition < TLY_MAX_PARTITIONS && !done[m->partition]) {
                done[m->partition] = true;
                remaining--;
            }
        } else if (m->err) {
            tly_error(errbuf, errlen, "reading %s: %s", topic, rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            goto out;
        } else if (fn(ctx, m, errbuf, errlen) < 0) {
            rd_kafka_message_destroy(m);
            goto out;
        }
        rd_kafka_message_destroy(m);
    }
    rc = 0;
out:
    if (partitions_out)
        *partitions_out = partitions;
    if (md)
        rd_kafka_metadata_destroy(md);
    rd_kafka_topic_partition_list_destroy(assignment);
    if (rk) {
        rd_kafka_consumer_close(rk);
        rd_kafka_destroy(rk);
    }
    return rc;
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
    if (cfg->by_partition && cfg->instance && m->instance[0] && strcmp(m->instance, cfg->instance) != 0)
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

static int on_manifest_record(void *ctx, const rd_kafka_message_t *msg, char *errbuf,
                              size_t errlen)
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
static void locate_file(const tly_recovery_config *cfg, tly_snapshot_manifest *m)
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
        rc = read_to_end(cfg, cfg->topics->snapshots.name, NULL, NULL, NULL, NULL, on_manifest_record,
                         &t, why, sizeof(why));
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
        locate_file(cfg, &rep->candidates[i].manifest);
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
                tly_log("warn", "database_moved_aside", "db=%s to=%s reason=\"-wal or -shm without its database\"",
                        cfg->db_path, rep->moved_aside);
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
        offsets_from_manifest(&c->manifest, cfg->topics->changelog.name, rep->start_offsets);
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

struct replay_ctx {
    const tly_recovery_config *cfg;
    const char *entity;
    tly_recovery_report *rep;
    tly_replayer *replayer; /* NULL in a dry run */
    int64_t *offsets;
    int64_t in_txn;         /* records in the open SQLite transaction */
    int64_t *partition_records; /* per partition, or NULL */
};

/* A dry run reads the entity without applying anything; the daemon's
 * counters rows are replayed too (changelog.h). */
static bool line_is_entity(const char *line, size_t len, const char *entity)
{
    json_tokener *tok = json_tokener_new();
    json_object *obj = tok ? json_tokener_parse_ex(tok, line, (int)len) : NULL, *v;
    bool ours = obj && json_object_object_get_ex(obj, "entity", &v) &&
                json_object_is_type(v, json_type_string) &&
                (strcmp(json_object_get_string(v), entity) == 0 ||
                 strcmp(json_object_get_string(v), TLY_CHANGELOG_COUNTERS_ENTITY) == 0);
    json_object_put(obj);
    if (tok)
        json_tokener_free(tok);
    return ours;
}

static int on_changelog_record(void *ctx, const rd_kafka_message_t *m, char *errbuf, size_t errlen)
{
    struct replay_ctx *c = ctx;
    tly_replay_outcome outcome;
    bool ours;

    if (m->len == 0)
        return 0;
    if (c->replayer) {
        /* A compacted changelog has holes in seq by design: gaps are expected
         * here, and key_seq keeps replay idempotent. */
        /* rows written before they said their partition came from the
         * input partition of the same number */
        tly_replayer_default_partition(c->replayer, (int)m->partition);
        if (tly_replayer_apply_line(c->replayer, m->payload, m->len, &outcome, errbuf, errlen) < 0)
            return -1;
        ours = !outcome.foreign;
    } else {
        ours = line_is_entity(m->payload, m->len, c->entity);
    }
    if (ours) {
        c->rep->records_replayed++;
        c->rep->bytes_replayed += (int64_t)m->len;
        if (c->partition_records)
            c->partition_records[m->partition]++;
    }
    if (m->offset > c->offsets[m->partition]) {
        c->offsets[m->partition] = m->offset;
        if (c->replayer) {
            char key[512];
            tly_store *store = tly_replayer_store(c->replayer);
            tly_meta_key_position(TLY_META_CHANGELOG, c->cfg->topics->changelog.name,
                                  (int)m->partition, key, sizeof(key));
            if (tly_store_meta_set_int(store, key, m->offset) < 0)
                return tly_error(errbuf, errlen, "cannot record the changelog offset: %s",
                                 sqlite3_errmsg(tly_store_db(store)));
            /* Offsets and rows commit together, so a replay cut short
             * resumes where it stopped. */
            if (++c->in_txn >= REPLAY_COMMIT_EVERY) {
                if (tly_store_commit(store, errbuf, errlen) < 0 ||
                    tly_store_begin(store, errbuf, errlen) < 0)
                    return -1;
                c->in_txn = 0;
            }
        }
    }
    return 0;
}

/* Opens the replayer recovery applies changelog records with: only `entity`
 * (pipelines that share a topic prefix share the changelog topic) and the
 * daemon's counters rows, which also bring the input positions their batches
 * recorded. */
static int open_replayer(const tly_recovery_config *cfg, const char *entity,
                         tly_replayer **replayer, char *errbuf, size_t errlen)
{
    char positions[512];

    if (tly_replayer_open(cfg->db_path, NULL, replayer, errbuf, errlen) < 0)
        return -1;
    tly_meta_key_position_prefix(TLY_META_INPUT, cfg->topics->input.name, positions,
                                 sizeof(positions));
    if (tly_replayer_only_entity(*replayer, entity) < 0 ||
        (cfg->pipeline && tly_replayer_record_positions(*replayer, cfg->pipeline,
                                                        cfg->topics->input.name, positions) < 0))
        return tly_error(errbuf, errlen, "out of memory");
    return 0;
}

int tly_recovery_replay(const tly_recovery_config *cfg, const char *entity,
                        tly_recovery_report *rep, int64_t *offsets_out, char *errbuf,
                        size_t errlen)
{
    int64_t offsets[TLY_MAX_PARTITIONS];
    struct replay_ctx c = {cfg, entity, rep, NULL, offsets, 0, NULL};
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
        if (open_replayer(cfg, entity, &c.replayer, errbuf, errlen) < 0)
            goto done;
        if (tly_store_begin(tly_replayer_store(c.replayer), errbuf, errlen) < 0)
            goto done;
        in_txn = true;
    }
    read = read_to_end(cfg, cfg->topics->changelog.name, rep->start_offsets,
                       rep->held_partitions > 0 ? held : NULL, rep->end_offsets,
                       &rep->changelog_partitions, on_changelog_record, &c, errbuf, errlen);
    if (read < 0)
        goto done;
    if (in_txn && tly_store_commit(tly_replayer_store(c.replayer), errbuf, errlen) < 0)
        goto done;
    in_txn = false;
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
    const char *snapshot = rep->chosen >= 0 ? rep->candidates[rep->chosen].manifest.snapshot_id : "";

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
        tly_store_meta_set_int(store, "recovery.at_ms", (int64_t)time(NULL) * 1000) < 0 ||
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
    if ((empty || rep->records_replayed > 0 || !cfg->changelog) && cfg->brokers && !cfg->by_partition) {
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
    if (empty && (rep->history_partitions > 0 || (rep->candidate_count > 0 && !cfg->by_partition)) &&
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
        fprintf(out, "changelog   off: the input is read again from the positions the state recorded\n");
        fprintf(out, "input       %lld record(s) to read again (up to the group's committed offsets)\n",
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
        fprintf(out, "replay      %lld record(s) of this pipeline, %lld bytes (%lld offsets, transaction markers included)\n",
                (long long)rep->records_replayed, (long long)rep->bytes_replayed, (long long)tail);
    }
    fprintf(out, "source      %s%s%s\n", rep->source,
            rep->chosen >= 0 ? " " : "",
            rep->chosen >= 0 ? rep->candidates[rep->chosen].manifest.snapshot_id : "");
    fprintf(out, "planned in  %lld ms\n", (long long)rep->ttr_ms);
}

/* ------------------------------------------------------------------------ */
/* Partitions: several instances of one group share the input              */
/* ------------------------------------------------------------------------ */

int tly_recovery_drop(tly_store *store, const tly_recovery_config *cfg, int partition,
                      char *errbuf, size_t errlen)
{
    if (tly_store_begin(store, errbuf, errlen) < 0)
        return -1;
    if (tly_partitions_forget(store, partition, cfg->topics->input.name,
                              cfg->topics->changelog.name, errbuf, errlen) < 0) {
        tly_store_rollback(store);
        return -1;
    }
    return tly_store_commit(store, errbuf, errlen);
}

int tly_recovery_present(tly_store *store, const tly_recovery_config *cfg, unsigned char *present,
                         char *errbuf, size_t errlen)
{
    return tly_partitions_present(store, cfg->topics->changelog.name, present, errbuf, errlen);
}

/* Replaces partition p's rows with those of the snapshot m (which holds it as
 * of changelog offset `offset`) through the replayer's store (triggers off:
 * copied rows are not new changes). The snapshot is verified once per take,
 * even for several partitions. Returns 0, or -1 with why (the snapshot is
 * passed over). */
static int adopt_snapshot(tly_store *store, const tly_recovery_config *cfg,
                          const tly_snapshot_manifest *m, int p, int64_t offset, bool *verified,
                          char *why, size_t whylen)
{
    if (!*verified && tly_snapshot_verify(m, why, whylen) < 0)
        return -1;
    *verified = true;
    return tly_partitions_adopt(store, m->path, p, cfg->topics->input.name,
                                cfg->topics->changelog.name, offset, why, whylen);
}

/* The changelog offset at which manifest m holds partition p, or -1. */
static int64_t manifest_offset(const tly_snapshot_manifest *m, const char *topic, int p)
{
    int64_t offsets[TLY_MAX_PARTITIONS];
    for (int i = 0; i < TLY_MAX_PARTITIONS; i++)
        offsets[i] = -1;
    offsets_from_manifest(m, topic, offsets);
    return offsets[p];
}

/* The newest snapshot in the snapshot directory (any instance's) that holds
 * partition p beyond changelog offset `after`, adopted; the one before it if
 * it does not verify. Returns the changelog offset the partition now stands
 * at, or `after` when no snapshot helped. */
static int64_t take_from_snapshots(tly_store *store, const tly_recovery_config *cfg,
                                   tly_snapshot_manifest *list, bool *verified, int n, int p,
                                   int64_t after, tly_partition_take *take)
{
    const char *topic = cfg->topics->changelog.name;
    for (;;) {
        int best = -1;
        int64_t best_offset = after;
        char why[600];
        for (int i = 0; i < n; i++) {
            int64_t o = list[i].path[0] ? manifest_offset(&list[i], topic, p) : -1;
            if (o > best_offset) {
                best = i;
                best_offset = o;
            }
        }
        if (best < 0)
            return after;
        locate_file(cfg, &list[best]);
        if (adopt_snapshot(store, cfg, &list[best], p, best_offset, &verified[best], why,
                           sizeof(why)) == 0) {
            take->source = "snapshot";
            snprintf(take->snapshot_id, sizeof(take->snapshot_id), "%s", list[best].snapshot_id);
            return best_offset;
        }
        tly_log("warn", "snapshot_rejected", "snapshot=%s partition=%d error=%s",
                list[best].snapshot_id, p, tly_log_quote(why, (char[700]){0}, 700));
        list[best].path[0] = '\0'; /* not tried again */
    }
}

/* Whether no transaction is open on the changelog partitions in only[]:
 * read_committed stops at the last stable offset, so a changelog partition
 * whose previous owner died with a transaction open (records written, input
 * offsets not sent yet) hides everything committed after that transaction's
 * first record until the broker aborts it. Reading to that end would miss
 * the batches another instance committed since. Returns 1 settled, 0 not
 * yet (*open_partition says which), -1 with errbuf. */
static int changelog_settled(const tly_recovery_config *cfg, const unsigned char *only,
                             int *open_partition, char *errbuf, size_t errlen)
{
    rd_kafka_t *committed = tly_kconf_reader(cfg->brokers, NULL, errbuf, errlen);
    rd_kafka_t *all = committed ? tly_kconf_reader_isolation(cfg->brokers, NULL, "read_uncommitted",
                                                             errbuf, errlen)
                                : NULL;
    int rc = -1;

    if (!committed || !all)
        goto done;
    rc = 1;
    for (int p = 0; p < TLY_MAX_PARTITIONS && rc == 1; p++) {
        int64_t low, stable, high;
        rd_kafka_resp_err_t e;
        if (!only[p])
            continue;
        if ((e = query_watermarks(committed, cfg->topics->changelog.name, p, false, &low,
                                  &stable)) ||
            (e = query_watermarks(all, cfg->topics->changelog.name, p, false, &low, &high))) {
            if (e == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
                continue; /* no changelog yet: nothing to hide */
            rc = tly_error(errbuf, errlen, "cannot read the offsets of %s [%d]: %s",
                           cfg->topics->changelog.name, p, rd_kafka_err2str(e));
            break;
        }
        if (stable < high) {
            *open_partition = p;
            rc = 0;
        }
    }
done:
    if (committed)
        rd_kafka_destroy(committed);
    if (all)
        rd_kafka_destroy(all);
    return rc;
}

int tly_recovery_take(const tly_recovery_config *cfg, const char *entity, tly_partition_take *takes,
                      int count, char *errbuf, size_t errlen)
{
    tly_replayer *replayer = NULL;
    tly_recovery_report *rep = calloc(1, sizeof(*rep));
    tly_snapshot_manifest *listed = NULL;
    tly_partition_row *rows = NULL;
    bool *verified = NULL;
    int64_t *after = calloc(TLY_MAX_PARTITIONS, sizeof(int64_t));
    int64_t *offsets = calloc(TLY_MAX_PARTITIONS, sizeof(int64_t));
    int64_t *records = calloc(TLY_MAX_PARTITIONS, sizeof(int64_t));
    unsigned char only[TLY_MAX_PARTITIONS] = {0};
    struct replay_ctx c = {cfg, entity, rep, NULL, offsets, 0, records};
    int64_t started = tly_clock_mono_ms();
    int listed_count = 0, rc = -1, read;
    tly_store *store;
    char why[512];

    if (!rep || !after || !offsets || !records) {
        tly_error(errbuf, errlen, "out of memory");
        goto done;
    }
    for (int p = 0; p < TLY_MAX_PARTITIONS; p++)
        after[p] = -1;
    for (int i = 0; i < count; i++)
        if (takes[i].partition >= 0 && takes[i].partition < TLY_MAX_PARTITIONS)
            only[takes[i].partition] = 1;
    if (cfg->brokers) {
        int open = -1, settled = changelog_settled(cfg, only, &open, errbuf, errlen);
        if (settled <= 0) {
            if (settled == 0)
                tly_log("debug", "changelog_transaction_open", "topic=%s partition=%d",
                        cfg->topics->changelog.name, open);
            rc = settled < 0 ? -1 : 1;
            goto done;
        }
    }
    if (open_replayer(cfg, entity, &replayer, errbuf, errlen) < 0)
        goto done;
    store = tly_replayer_store(replayer);
    c.replayer = replayer;
    if (cfg->snapshot_dir && tly_snapshot_list(cfg->snapshot_dir, &listed, &listed_count, why,
                                               sizeof(why)) < 0)
        tly_log("warn", "snapshot_dir_unreadable", "error=\"%s\"", why);
    if (listed_count > 0 && !(verified = calloc((size_t)listed_count, sizeof(bool)))) {
        tly_error(errbuf, errlen, "out of memory");
        goto done;
    }
    for (int i = 0; i < count; i++) {
        tly_partition_take *t = &takes[i];
        int p = t->partition;
        char key[512];
        int64_t local;
        if (p < 0 || p >= TLY_MAX_PARTITIONS) {
            tly_error(errbuf, errlen, "partition %d: at most %d partitions are supported", p,
                      TLY_MAX_PARTITIONS);
            goto done;
        }
        only[p] = 1;
        t->snapshot_id[0] = '\0';
        /* The database holds the partition as of the changelog offset it
         * recorded for it (a dropped partition has none). */
        tly_meta_key_position(TLY_META_CHANGELOG, cfg->topics->changelog.name, p, key,
                              sizeof(key));
        if (tly_store_meta_get_int(store, key, &local) == 1) {
            after[p] = local;
            t->source = "local";
        } else {
            t->source = "new";
        }
        after[p] = take_from_snapshots(store, cfg, listed, verified, listed_count, p, after[p], t);
    }
    /* Then changelog partition p from there to its end. The consumer asked
     * for the group's committed offsets first (read_committed: it waited for
     * any transaction of the previous owner to end), so the end read here
     * holds every batch those offsets count. */
    memcpy(offsets, after, TLY_MAX_PARTITIONS * sizeof(int64_t));
    if (tly_store_begin(store, errbuf, errlen) < 0)
        goto done;
    read = !cfg->brokers ? 0 /* offline: the snapshots only */
                         : read_to_end(cfg, cfg->topics->changelog.name, after, only, NULL, NULL,
                                       on_changelog_record, &c, errbuf, errlen);
    if (read < 0 || tly_store_commit(store, errbuf, errlen) < 0) {
        tly_store_rollback(store);
        goto done;
    }
    if (!(rows = calloc((size_t)count + 1, sizeof(*rows)))) {
        tly_error(errbuf, errlen, "out of memory");
        goto done;
    }
    for (int i = 0; i < count; i++) {
        tly_partition_take *t = &takes[i];
        t->records = records[t->partition];
        t->ms = tly_clock_mono_ms() - started;
        if (strcmp(t->source, "new") == 0 && t->records > 0)
            t->source = "changelog";
        rows[i] = (tly_partition_row){t->partition, tly_clock_wall_ms(), t->source, t->ms,
                                      t->records};
    }
    if (tly_store_begin(store, errbuf, errlen) < 0)
        goto done;
    if (tly_partitions_record(store, rows, count, errbuf, errlen) < 0) {
        tly_store_rollback(store);
        goto done;
    }
    if (tly_store_commit(store, errbuf, errlen) < 0)
        goto done;
    rc = 0;
done:
    free(rows);
    tly_replayer_close(replayer);
    free(listed);
    free(verified);
    free(rep);
    free(after);
    free(offsets);
    free(records);
    return rc;
}
