/* adapters/kafka/takeover.c - one input partition at a time, while the
 * daemon runs: taking a newly assigned partition over (this database's rows,
 * the newest snapshot that holds it, then its changelog partition to the
 * end), dropping a revoked one, listing what the database holds. */
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
/* Partitions: several instances of one group share the input              */
/* ------------------------------------------------------------------------ */

int tly_recovery_drop(tly_store *store, const tly_recovery_config *cfg, int partition, char *errbuf,
                      size_t errlen)
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
    recovery_offsets_from_manifest(m, topic, offsets);
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
        recovery_locate_file(cfg, &list[best]);
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
        if ((e = recovery_query_watermarks(committed, cfg->topics->changelog.name, p, false, &low,
                                           &stable)) ||
            (e = recovery_query_watermarks(all, cfg->topics->changelog.name, p, false, &low,
                                           &high))) {
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

/* Where each partition to take starts: the changelog offset this database
 * recorded for it ("local"; a dropped partition has none: "new"), or a newer
 * one from the newest snapshot that holds it ("snapshot"). after[p] gets it;
 * take->source and take->snapshot_id say where it came from. Returns 0 or -1
 * with errbuf. */
static int start_points(tly_store *store, const tly_recovery_config *cfg, tly_partition_take *takes,
                        int count, int64_t *after, char *errbuf, size_t errlen)
{
    tly_snapshot_manifest *listed = NULL;
    bool *verified = NULL;
    int listed_count = 0, rc = -1;
    char why[512];

    if (cfg->snapshot_dir &&
        tly_snapshot_list(cfg->snapshot_dir, &listed, &listed_count, why, sizeof(why)) < 0)
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
        t->snapshot_id[0] = '\0';
        tly_meta_key_position(TLY_META_CHANGELOG, cfg->topics->changelog.name, p, key, sizeof(key));
        if (tly_store_meta_get_int(store, key, &local) == 1) {
            after[p] = local;
            t->source = "local";
        } else {
            t->source = "new";
        }
        after[p] = take_from_snapshots(store, cfg, listed, verified, listed_count, p, after[p], t);
    }
    rc = 0;
done:
    free(listed);
    free(verified);
    return rc;
}

/* Fills each take's figures and records the partitions as held (the
 * partitions table), in a transaction of its own. Returns 0 or -1. */
static int record_takes(tly_store *store, tly_partition_take *takes, int count,
                        const int64_t *records, int64_t started, char *errbuf, size_t errlen)
{
    tly_partition_row *rows = calloc((size_t)count + 1, sizeof(*rows));
    int rc = -1;

    if (!rows)
        return tly_error(errbuf, errlen, "out of memory");
    for (int i = 0; i < count; i++) {
        tly_partition_take *t = &takes[i];
        t->records = records[t->partition];
        t->ms = tly_clock_mono_ms() - started;
        if (strcmp(t->source, "new") == 0 && t->records > 0)
            t->source = "changelog";
        rows[i] =
            (tly_partition_row){t->partition, tly_clock_wall_ms(), t->source, t->ms, t->records};
    }
    if (tly_store_begin(store, errbuf, errlen) == 0) {
        if (tly_partitions_record(store, rows, count, errbuf, errlen) < 0)
            tly_store_rollback(store);
        else if (tly_store_commit(store, errbuf, errlen) == 0)
            rc = 0;
    }
    free(rows);
    return rc;
}

tly_take_result tly_recovery_take(const tly_recovery_config *cfg, const char *entity,
                                  tly_partition_take *takes, int count, char *errbuf, size_t errlen)
{
    tly_replayer *replayer = NULL;
    tly_recovery_report *rep = calloc(1, sizeof(*rep));
    int64_t *after = calloc(TLY_MAX_PARTITIONS, sizeof(int64_t));
    int64_t *offsets = calloc(TLY_MAX_PARTITIONS, sizeof(int64_t));
    int64_t *records = calloc(TLY_MAX_PARTITIONS, sizeof(int64_t));
    unsigned char only[TLY_MAX_PARTITIONS] = {0};
    struct replay_ctx c = {cfg, entity, rep, NULL, offsets, 0, records, {0}};
    int64_t started = tly_clock_mono_ms();
    tly_take_result rc = TLY_TAKE_FAILED;
    int read;
    tly_store *store;

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
            rc = settled < 0 ? TLY_TAKE_FAILED : TLY_TAKE_WAIT;
            goto done;
        }
    }
    if (recovery_open_replayer(cfg, entity, &replayer, errbuf, errlen) < 0)
        goto done;
    store = tly_replayer_store(replayer);
    c.replayer = replayer;
    if (start_points(store, cfg, takes, count, after, errbuf, errlen) < 0)
        goto done;
    /* Then changelog partition p from there to its end. The consumer asked
     * for the group's committed offsets first (read_committed: it waited for
     * any transaction of the previous owner to end), so the end read here
     * holds every batch those offsets count. */
    memcpy(offsets, after, TLY_MAX_PARTITIONS * sizeof(int64_t));
    /* a new database's first take-over fills empty tables: their indexes
     * are built once at the end (kept by a kill: the next open builds them) */
    if (tly_replayer_defer_indexes(replayer, errbuf, errlen) < 0 ||
        tly_store_begin(store, errbuf, errlen) < 0)
        goto done;
    read = !cfg->brokers
               ? 0 /* offline: the snapshots only */
               : recovery_read_to_end(cfg, cfg->topics->changelog.name, after, only, NULL, NULL,
                                      recovery_on_changelog_record, &c, errbuf, errlen);
    if (read < 0 || recovery_replay_commit(&c, errbuf, errlen) < 0) {
        tly_store_rollback(store);
        goto done;
    }
    if (tly_replayer_finish(replayer, errbuf, errlen) < 0 ||
        record_takes(store, takes, count, records, started, errbuf, errlen) < 0)
        goto done;
    rc = TLY_TAKE_DONE;
done:
    tly_replayer_close(replayer);
    free(rep);
    free(after);
    free(offsets);
    free(records);
    return rc;
}
