/* adapters/kafka/assignment.c - the consumer and the input partitions this
 * instance owns (ownership.h has the states and the transition table).
 *
 * Cooperative (incremental) rebalancing: only the partitions that move are in
 * a rebalance's list; the others keep flowing. An assigned partition is taken
 * over - its state brought up to date from this database, the newest snapshot
 * and its changelog partition (recovery.c tly_recovery_take) - before it is
 * consumed: in the rebalance callback when the group's committed offsets are
 * stable at once (assigned -> HELD), otherwise it is assigned paused
 * (PENDING) and taken over between polls (runner_take_pending), so waiting
 * for a crashed owner's transaction does not hold the other partitions up. A
 * revoked partition's rows are dropped (-> UNASSIGNED); the new owner rebuilds
 * them. With the changelog off nothing could rebuild them: the rows stay
 * (-> STANDBY), and the state is only right for a group of one instance. */
#include "runner_int.h"

#include "changelog.h"
#include "clock.h"
#include "error.h"
#include "kconf.h"
#include "log.h"
#include "meta.h"
#include "partitions.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* With the changelog off nothing can bring SQLite forward, so the input is
 * read from the positions SQLite recorded: after a crash between the Kafka and
 * the SQLite commit, that batch is applied again (its outputs and dead letters
 * are written a second time, with the same values). */
static void positions_from_state(struct runner *r, rd_kafka_topic_partition_list_t *partitions)
{
    bool recorded_any;

    if (r->cfg->changelog || !r->store)
        return;
    /* A state that recorded some input partitions but not this one never
     * applied anything of it - even if the group committed offsets for it (a
     * crash after the Kafka commit of its first batch): it starts from the
     * beginning. A state that recorded none (new, or --allow-empty) takes the
     * group's offsets. */
    recorded_any = tly_meta_has_positions(tly_store_db(r->store)) == 1;
    for (int i = 0; i < partitions->cnt; i++) {
        char key[512];
        int64_t offset;
        tly_meta_key_position(TLY_META_INPUT, partitions->elems[i].topic,
                              (int)partitions->elems[i].partition, key, sizeof(key));
        if (tly_store_meta_get_int(r->store, key, &offset) == 1)
            partitions->elems[i].offset = offset;
        else if (recorded_any)
            partitions->elems[i].offset = RD_KAFKA_OFFSET_BEGINNING;
    }
}

#define STANDBY_MS 15000      /* see runner_drop_standby() */
#define WATCHDOG_MS 60000     /* see runner_watch_consumer() */
#define WATCHDOG_LOST_MS 5000 /* the same after the group lost our partitions */
#define TAKE_RETRY_MS 300     /* between two asks for a PENDING partition's offsets */

/* What a take-over attempt came to. */
typedef enum {
    TAKE_DONE,   /* the partitions' state is up to date: consume them */
    TAKE_WAIT,   /* a previous owner's transaction is still open: later */
    TAKE_FAILED, /* fatal (errbuf) */
} take_result;

/* Moves input partition p by event (ownership.h). An invalid step is a bug
 * in this file: logged loudly, the state left as it was. */
static void own(struct runner *r, int p, tly_part_event event)
{
    char err[256];
    if (tly_ownership_apply(r->assign.owned, p, event, tly_clock_mono_ms(), err, sizeof(err)) < 0)
        tly_log("error", "partition_state_invalid", "error=%s",
                tly_log_quote(err, (char[300]){0}, 300));
}

/* Applies event to each partition of the input topic in list. */
static void own_list(struct runner *r, const rd_kafka_topic_partition_list_t *list,
                     tly_part_event event)
{
    for (int i = 0; i < list->cnt; i++)
        if (strcmp(list->elems[i].topic, r->topics.input.name) == 0)
            own(r, (int)list->elems[i].partition, event);
}

/* The PENDING partitions as a list for librdkafka (NULL when none). */
static rd_kafka_topic_partition_list_t *pending_list(struct runner *r)
{
    rd_kafka_topic_partition_list_t *list;
    int n = tly_ownership_count(r->assign.owned, TLY_PART_PENDING);
    if (n == 0 || !(list = rd_kafka_topic_partition_list_new(n)))
        return NULL;
    for (int p = 0; p < TLY_MAX_PARTITIONS; p++)
        if (tly_ownership_state(r->assign.owned, p) == TLY_PART_PENDING)
            rd_kafka_topic_partition_list_add(list, r->topics.input.name, p);
    return list;
}

static void drop_partition(struct runner *r, int p, tly_part_event event)
{
    int64_t started = tly_clock_mono_ms();
    char err[1024];
    if (tly_recovery_drop(r->store, r->rcfg, p, err, sizeof(err)) < 0) {
        /* Left as they are: the next take of the partition replaces them. */
        tly_log("error", "partition_drop_error", "partition=%d error=%s", p,
                tly_log_quote(err, (char[1100]){0}, 1100));
    } else {
        /* Or the next batch would record our last offset of p again, and a
         * later take of p would start its replay there, over rows now gone. */
        r->changelog_offsets[p] = -1;
        tly_metrics_add(r->metrics, TLY_C_PARTITIONS_REVOKED, 1);
        tly_log("info", "partition_dropped", "partition=%d reason=%s ms=%lld", p,
                event == TLY_PART_REVOKED ? "revoked" : "not_assigned",
                (long long)(tly_clock_mono_ms() - started));
    }
    own(r, p, event);
}

/* The event totals after partitions came or went, and the held gauge. */
static void partitions_changed(struct runner *r)
{
    char err[1024];
    if (runner_sum_counters(r, err, sizeof(err)) < 0)
        tly_log("error", "partition_drop_error", "error=%s",
                tly_log_quote(err, (char[1100]){0}, 1100));
    runner_count_held(r);
}

/* Revoked (or lost) partitions: with the changelog on, their rows go (the
 * new owner rebuilds them); at shutdown or with the changelog off they stay. */
static void revoke_partitions(struct runner *r, rd_kafka_topic_partition_list_t *partitions)
{
    bool keep = !r->cfg->changelog || r->assign.closing;
    for (int i = 0; i < partitions->cnt; i++) {
        int p = (int)partitions->elems[i].partition;
        tly_part_state s = tly_ownership_state(r->assign.owned, p);
        if (strcmp(partitions->elems[i].topic, r->topics.input.name) != 0)
            continue;
        if (keep && s == TLY_PART_HELD)
            own(r, p, TLY_PART_KEPT);
        else if (keep)
            own(r, p, TLY_PART_REVOKED); /* PENDING: never taken, nothing of it to keep */
        else
            drop_partition(r, p, TLY_PART_REVOKED);
    }
    if (!keep)
        partitions_changed(r);
}

/* Brings the state of the partitions in `committed` (their committed
 * offsets, read already) up to date: recovery.c tly_recovery_take. waited is
 * how long the offsets took. */
static take_result take_partitions(struct runner *r, rd_kafka_topic_partition_list_t *committed,
                                   int64_t waited, char *errbuf, size_t errlen)
{
    tly_partition_take *takes = calloc((size_t)committed->cnt + 1, sizeof(*takes));
    take_result result = TAKE_FAILED;
    tly_take_result taken = TLY_TAKE_DONE;
    int n = 0;
    char err[1024];

    if (!takes)
        return tly_error(errbuf, errlen, "out of memory"), TAKE_FAILED;
    for (int i = 0; i < committed->cnt; i++) {
        int p = (int)committed->elems[i].partition;
        if (strcmp(committed->elems[i].topic, r->topics.input.name) == 0 && p >= 0 &&
            p < TLY_MAX_PARTITIONS)
            takes[n++].partition = p;
    }
    if (n > 0 && (taken = tly_recovery_take(r->rcfg, tly_pipeline_entity(r->pipeline), takes, n,
                                            err, sizeof(err))) == TLY_TAKE_FAILED) {
        tly_error(errbuf, errlen, "cannot take over the assigned partitions: %s", err);
        goto done;
    }
    if (taken == TLY_TAKE_WAIT) { /* a changelog partition has a transaction open: later */
        result = TAKE_WAIT;
        goto done;
    }
    /* Nothing anywhere for a partition the group has consumed: the changelog
     * topic lost it (every committed batch leaves a counters record there).
     * Resuming from the committed offset would count it as empty. */
    for (int i = 0; i < n && !r->cfg->allow_empty; i++) {
        rd_kafka_topic_partition_t *c =
            rd_kafka_topic_partition_list_find(committed, r->topics.input.name, takes[i].partition);
        if (strcmp(takes[i].source, "new") == 0 && c && c->offset > 0) {
            tly_error(errbuf, errlen,
                      "partition %d of %s: the group has consumed it up to offset "
                      "%lld, but neither this database, a snapshot in %s nor %s holds its state; "
                      "refusing to count it from empty (--allow-empty does)",
                      takes[i].partition, r->topics.input.name, (long long)c->offset,
                      r->snapshot_dir, r->topics.changelog.name);
            goto done;
        }
    }
    for (int i = 0; i < n; i++) {
        /* meta has where the take left the partition; our deliveries go on from there */
        r->changelog_offsets[takes[i].partition] = -1;
        tly_log("info", "partition_assigned",
                "partition=%d source=%s snapshot=%s records=%lld ms=%lld waited_ms=%lld",
                takes[i].partition, takes[i].source,
                takes[i].snapshot_id[0] ? takes[i].snapshot_id : "-", (long long)takes[i].records,
                (long long)takes[i].ms, (long long)waited);
        tly_metrics_set_partition_recovery(r->metrics, takes[i].partition, waited + takes[i].ms,
                                           takes[i].records);
        tly_metrics_add(r->metrics, TLY_C_PARTITIONS_ASSIGNED, 1);
    }
    /* What the replay marked pending was emitted by the previous owner. */
    if (runner_sum_counters(r, errbuf, errlen) < 0 || runner_forget_emitted(r, errbuf, errlen) < 0)
        goto done;
    runner_count_held(r);
    result = TAKE_DONE;
done:
    free(takes);
    return result;
}

/* Takes the assigned partitions over before they are assigned, when their
 * committed offsets are stable at once (see runner_take_pending). An error
 * goes to assign.error. */
static take_result take_on_assign(struct runner *r, rd_kafka_topic_partition_list_t *partitions,
                                  int64_t started)
{
    rd_kafka_topic_partition_list_t *committed = rd_kafka_topic_partition_list_copy(partitions);
    rd_kafka_resp_err_t e = rd_kafka_committed(r->consumer, committed, 1000);
    take_result result = TAKE_WAIT;

    if (e == RD_KAFKA_RESP_ERR__TIMED_OUT) {
        tly_log("info", "committed_offsets_wait",
                "partitions=%d note=\"a previous owner's "
                "transaction is still open: assigned paused, taken over when it ends\"",
                partitions->cnt);
    } else if (e) {
        snprintf(r->assign.error, sizeof(r->assign.error), "cannot read the committed offsets: %s",
                 rd_kafka_err2str(e));
        result = TAKE_FAILED;
    } else if ((result = take_partitions(r, committed, tly_clock_mono_ms() - started,
                                         r->assign.error, sizeof(r->assign.error))) == TAKE_WAIT) {
        tly_log("info", "committed_offsets_wait",
                "partitions=%d note=\"a previous owner's "
                "transaction is still open on the changelog: assigned paused, taken over "
                "when it ends\"",
                partitions->cnt);
    }
    rd_kafka_topic_partition_list_destroy(committed);
    return result;
}

/* Pauses just-assigned partitions until runner_take_pending has taken them over. */
static void pause_assigned(struct runner *r, rd_kafka_topic_partition_list_t *partitions)
{
    rd_kafka_resp_err_t e = rd_kafka_pause_partitions(r->consumer, partitions);
    if (e)
        snprintf(r->assign.error, sizeof(r->assign.error),
                 "cannot pause the assigned partitions: %s", rd_kafka_err2str(e));
    own_list(r, partitions, TLY_PART_ASSIGNED_WAIT);
}

/* librdkafka's rebalance callback, served inside a poll (see the top of the
 * file). Nothing is in flight during a poll: on a revoke what was collected
 * is dropped and read again. */
static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *partitions, void *opaque)
{
    struct runner *r = opaque;
    rd_kafka_error_t *error = NULL;
    int64_t started = tly_clock_mono_ms();
    const char *change;
    take_result taken = TAKE_DONE;

    tly_metrics_add(r->metrics, TLY_C_REBALANCES, 1);
    tly_metrics_clear_lag(r->metrics); /* refilled from the new assignment */
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        change = "assigned";
        positions_from_state(r, partitions);
        if (r->cfg->changelog && partitions->cnt > 0 &&
            (taken = take_on_assign(r, partitions, started)) == TAKE_FAILED)
            return; /* not assigned: the loop stops with assign.error */
        error = rd_kafka_incremental_assign(rk, partitions);
        if (!error && taken == TAKE_WAIT)
            pause_assigned(r, partitions);
        else if (!error)
            own_list(r, partitions, TLY_PART_ASSIGNED);
    } else {
        change = rd_kafka_assignment_lost(rk) ? "lost" : "revoked";
        if (rd_kafka_assignment_lost(rk))
            r->assign.lost_ms = tly_clock_mono_ms();
        r->batch.revoked = true;
        error = rd_kafka_incremental_unassign(rk, partitions);
        revoke_partitions(r, partitions);
    }
    r->assign.changed_ms = tly_clock_mono_ms();
    tly_log("info", "rebalance", "change=%s partitions=%d ms=%lld", change, partitions->cnt,
            (long long)(tly_clock_mono_ms() - started));
    tly_metrics_set(r->metrics, TLY_G_REBALANCE_MS, tly_clock_mono_ms() - started);
    if (error) {
        tly_log("error", "rebalance", "error=\"%s\"", rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
    }
}

rd_kafka_t *runner_new_consumer(struct runner *r, char *errbuf, size_t errlen)
{
    rd_kafka_topic_partition_list_t *topics;
    rd_kafka_resp_err_t err;
    char session_timeout[32], client_id[300];
    rd_kafka_conf_t *conf;
    rd_kafka_t *rk;

    snprintf(session_timeout, sizeof(session_timeout), "%lld",
             (long long)r->cfg->session_timeout_ms);
    snprintf(client_id, sizeof(client_id), "tally-%s", r->cfg->instance_id);
    {
        /* members learn of a rebalance from a heartbeat: with librdkafka's 3 s
         * each of the two cooperative rounds waited that long */
        /* A fetch of up to 8 MiB a partition: with librdkafka's 1 MiB the
         * consumer, not the apply, set the pace of a drain of 2 M orders with
         * few keys (128k orders/s, the batch loop idle half the time; 174k
         * with these two, 192k with 16 MiB for 10-20 MB more RSS). Its
         * prefetch queue is kept to 16 MiB (64 by default): at 8 MiB it
         * throttled the fetches (98k orders/s). */
        const char *const defaults[] = {"client.id",
                                        client_id,
                                        "heartbeat.interval.ms",
                                        "1000",
                                        "max.partition.fetch.bytes",
                                        "8388608",
                                        "queued.max.messages.kbytes",
                                        "16384",
                                        NULL};
        /* static membership: a restart within the session timeout gets its
         * partitions back without a rebalance. 45 s (Kafka's default) also
         * outlasts a broker restart, which a 10 s session did not always. */
        const char *const required[] = {"group.id",
                                        r->cfg->group_id,
                                        "group.instance.id",
                                        r->cfg->instance_id,
                                        "session.timeout.ms",
                                        session_timeout,
                                        "isolation.level",
                                        "read_committed",
                                        "enable.auto.commit",
                                        "false",
                                        "enable.auto.offset.store",
                                        "false",
                                        "auto.offset.reset",
                                        "earliest",
                                        "partition.assignment.strategy",
                                        "cooperative-sticky",
                                        NULL};
        if (!(conf = tly_kconf_new(r->cfg->brokers, defaults, required, errbuf, errlen)))
            return NULL;
    }
    rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
    rd_kafka_conf_set_opaque(conf, r);
    if (!(rk = tly_kconf_client(RD_KAFKA_CONSUMER, conf, "the consumer", errbuf, errlen)))
        return NULL;
    rd_kafka_poll_set_consumer(rk);
    topics = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(topics, r->topics.input.name, RD_KAFKA_PARTITION_UA);
    err = rd_kafka_subscribe(rk, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    if (err) {
        tly_error(errbuf, errlen, "cannot subscribe to %s: %s", r->topics.input.name,
                  rd_kafka_err2str(err));
        rd_kafka_destroy(rk);
        return NULL;
    }
    return rk;
}

/* Seeks every assigned partition back to its committed offset (or the start). */
int runner_rewind_consumer(struct runner *r, char *errbuf, size_t errlen)
{
    rd_kafka_topic_partition_list_t *assigned = NULL;
    rd_kafka_error_t *error;
    rd_kafka_resp_err_t err = rd_kafka_assignment(r->consumer, &assigned);
    int rc = -1;

    if (err) {
        tly_error(errbuf, errlen, "cannot read assignment: %s", rd_kafka_err2str(err));
        goto done;
    }
    if (assigned->cnt == 0) {
        rc = 0;
        goto done;
    }
    if ((err = rd_kafka_committed(r->consumer, assigned, KAFKA_TIMEOUT_MS))) {
        tly_error(errbuf, errlen, "cannot read committed offsets: %s", rd_kafka_err2str(err));
        goto done;
    }
    positions_from_state(r, assigned);
    for (int i = 0; i < assigned->cnt; i++)
        if (assigned->elems[i].offset < 0)
            assigned->elems[i].offset = RD_KAFKA_OFFSET_BEGINNING;
    if ((error = rd_kafka_seek_partitions(r->consumer, assigned, KAFKA_TIMEOUT_MS))) {
        tly_error(errbuf, errlen, "cannot rewind: %s", rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
        goto done;
    }
    tly_log("info", "rewind", "partitions=%d", assigned->cnt);
    rc = 0;
done:
    if (assigned)
        rd_kafka_topic_partition_list_destroy(assigned);
    return rc;
}

/* The pipeline's event totals are the sum over the partitions held. */
int runner_sum_counters(struct runner *r, char *errbuf, size_t errlen)
{
    if (tly_store_begin(r->store, errbuf, errlen) < 0)
        return -1;
    if (tly_changelog_sum_counters(r->store, tly_pipeline_name(r->pipeline), errbuf, errlen) < 0) {
        tly_store_rollback(r->store);
        return -1;
    }
    return tly_store_commit(r->store, errbuf, errlen);
}

void runner_count_held(struct runner *r)
{
    int64_t held = tly_partitions_count(r->store);
    if (held >= 0)
        tly_metrics_set(r->metrics, TLY_G_PARTITIONS_HELD, held);
}

/* At start: the partitions whose rows the recovered database holds are
 * STANDBY (runner_drop_standby). Returns 0 or -1 with errbuf. */
int runner_restore_standby(struct runner *r, char *errbuf, size_t errlen)
{
    unsigned char present[TLY_MAX_PARTITIONS];
    if (!r->cfg->changelog)
        return 0; /* nothing could rebuild them elsewhere: never dropped */
    if (tly_recovery_present(r->store, r->rcfg, present, errbuf, errlen) < 0)
        return -1;
    for (int p = 0; p < TLY_MAX_PARTITIONS; p++)
        if (present[p])
            own(r, p, TLY_PART_RESTORED);
    r->assign.changed_ms = tly_clock_mono_ms();
    return 0;
}

/* A start can leave rows of partitions this instance is not assigned: the
 * partitions it held before it stopped (others may have them now), or all
 * of them after a rebuild from a snapshot or the whole changelog. They are
 * right as of the changelog offset recorded for them, so an assignment
 * soon after only replays the tail; once the group has left the consumer's
 * assignment alone for STANDBY_MS the STANDBY ones are dropped. */
void runner_drop_standby(struct runner *r)
{
    if (!r->cfg->changelog || tly_ownership_count(r->assign.owned, TLY_PART_STANDBY) == 0 ||
        tly_clock_mono_ms() < r->assign.changed_ms + STANDBY_MS)
        return;
    for (int p = 0; p < TLY_MAX_PARTITIONS; p++)
        if (tly_ownership_state(r->assign.owned, p) == TLY_PART_STANDBY)
            drop_partition(r, p, TLY_PART_NOT_ASSIGNED);
    partitions_changed(r);
}

/* Logs, at most every 5 s, that PENDING partitions still wait. */
static void log_take_wait(struct runner *r, const char *note)
{
    int64_t now = tly_clock_mono_ms();
    if (now - r->assign.take_logged_ms < 5000)
        return;
    r->assign.take_logged_ms = now;
    tly_log("info", "committed_offsets_wait", "partitions=%d waited_ms=%lld note=\"%s\"",
            tly_ownership_count(r->assign.owned, TLY_PART_PENDING),
            (long long)(now - tly_ownership_oldest(r->assign.owned, TLY_PART_PENDING)), note);
}

/* The group's committed offsets of the assigned partitions come first: with
 * read_committed, librdkafka asks for stable ones, which the broker withholds
 * while the previous owner's transaction is open (a crashed instance's ends
 * when its transaction.timeout.ms passes), so the changelog's end read next
 * holds every batch those offsets count. Usually they come at once and the
 * rebalance callback takes the partitions over before assigning them. When
 * they do not, the partitions are assigned paused (PENDING), and this asks
 * again between polls with a short timeout: while it waits the other
 * partitions flow. Once taken over they are sought to the committed offsets
 * (what was fetched before the pause is not used) and resumed (HELD).
 * Returns 0 (done, or not yet), -1 with errbuf. */
int runner_take_pending(struct runner *r, char *errbuf, size_t errlen)
{
    rd_kafka_topic_partition_list_t *committed;
    rd_kafka_resp_err_t e;
    rd_kafka_error_t *error;
    int64_t since;
    int rc = -1;

    if (tly_ownership_count(r->assign.owned, TLY_PART_PENDING) == 0 ||
        tly_clock_mono_ms() < r->assign.take_retry_ms || !(committed = pending_list(r)))
        return 0;
    since = tly_ownership_oldest(r->assign.owned, TLY_PART_PENDING);
    if ((e = rd_kafka_committed(r->consumer, committed, 200))) {
        r->assign.take_retry_ms = tly_clock_mono_ms() + TAKE_RETRY_MS;
        if (e != RD_KAFKA_RESP_ERR__TIMED_OUT) {
            tly_error(errbuf, errlen, "cannot read the committed offsets: %s", rd_kafka_err2str(e));
        } else if (tly_clock_mono_ms() - since > 10 * KAFKA_TIMEOUT_MS) {
            tly_error(errbuf, errlen,
                      "the committed offsets of %d assigned partitions stayed "
                      "unstable for %d s",
                      committed->cnt, 10 * KAFKA_TIMEOUT_MS / 1000);
        } else {
            log_take_wait(r, "a previous owner's transaction is still open");
            rc = 0;
        }
        goto done;
    }
    for (int i = 0; i < committed->cnt; i++)
        if (committed->elems[i].offset < 0)
            committed->elems[i].offset = RD_KAFKA_OFFSET_BEGINNING; /* auto.offset.reset */
    switch (take_partitions(r, committed, tly_clock_mono_ms() - since, errbuf, errlen)) {
    case TAKE_WAIT: /* the changelog still hides a previous owner's transaction */
        r->assign.take_retry_ms = tly_clock_mono_ms() + TAKE_RETRY_MS;
        log_take_wait(r, "a previous owner's transaction is still open on the changelog");
        rc = 0;
        goto done;
    case TAKE_FAILED: goto done;
    case TAKE_DONE: break;
    }
    if ((error = rd_kafka_seek_partitions(r->consumer, committed, KAFKA_TIMEOUT_MS))) {
        tly_error(errbuf, errlen, "cannot seek the assigned partitions: %s",
                  rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
        goto done;
    }
    if ((e = rd_kafka_resume_partitions(r->consumer, committed))) {
        tly_error(errbuf, errlen, "cannot resume the assigned partitions: %s", rd_kafka_err2str(e));
        goto done;
    }
    own_list(r, committed, TLY_PART_TAKEN);
    rc = 0;
done:
    rd_kafka_topic_partition_list_destroy(committed);
    return rc;
}

/* Whether m is from a partition still being taken over (fetched before the
 * pause took hold): such a message is read again after the seek. */
bool runner_is_pending(const struct runner *r, const rd_kafka_message_t *m)
{
    return strcmp(rd_kafka_topic_name(m->rkt), r->topics.input.name) == 0 &&
           tly_ownership_state(r->assign.owned, (int)m->partition) == TLY_PART_PENDING;
}

/* librdkafka 2.0.2 can lose a static member's assignment (a session timeout
 * during a broker restart) and never rejoin: the group stays empty and the
 * daemon idles forever. A consumer without partitions for WATCHDOG_MS is
 * replaced by a new one; with the same group.instance.id it rejoins at once.
 * After an outage that cost the partitions (a "lost" rebalance) the wait is
 * WATCHDOG_LOST_MS, counted while the cluster answers: the outage is the
 * likely cause, and the group is back to normal a few seconds after the
 * broker is (a consumer replaced needlessly only rejoins).
 * Safe between batches: nothing is in flight, and the new consumer starts
 * from the committed offsets. What it still counted as held or pending
 * becomes STANDBY: the rows are right, the new assignment takes them over. */
int runner_watch_consumer(struct runner *r, char *errbuf, size_t errlen)
{
    rd_kafka_topic_partition_list_t *assigned = NULL;
    int64_t now = tly_clock_mono_ms();
    int count;

    if (now - r->assign.last_watch < 1000)
        return 0;
    r->assign.last_watch = now;
    if (rd_kafka_assignment(r->consumer, &assigned) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return 0;
    count = assigned->cnt;
    rd_kafka_topic_partition_list_destroy(assigned);
    if (count > 0) {
        r->assign.unassigned_since = 0;
        r->assign.lost_ms = 0;
        return 0;
    }
    if (!r->assign.unassigned_since) {
        r->assign.unassigned_since = now;
        return 0;
    }
    if (now - r->assign.unassigned_since <
        (r->assign.lost_ms && r->assign.watchdog_ms > WATCHDOG_LOST_MS ? WATCHDOG_LOST_MS
                                                                       : r->assign.watchdog_ms))
        return 0;
    /* Only while the cluster answers: with the broker gone, destroying the
     * consumer can block for minutes (and SIGTERM with it), and a new one
     * could not join anyway. */
    {
        rd_kafka_resp_err_t err = runner_probe_cluster(r, 2000);
        if (err) {
            tly_log("warn", "consumer_watchdog",
                    "reason=\"no partitions for %lld s, but the "
                    "cluster does not answer (%s): waiting\"",
                    (long long)(r->assign.watchdog_ms / 1000), rd_kafka_err2str(err));
            r->assign.unassigned_since = now;
            return 0;
        }
    }
    tly_log("warn", "consumer_restart", "reason=\"no partitions for %lld s%s\"",
            (long long)((now - r->assign.unassigned_since) / 1000),
            r->assign.lost_ms ? " after the group lost them" : "");
    r->assign.lost_ms = 0;
    runner_release_collected(r);
    rd_kafka_destroy_flags(r->consumer, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
    r->assign.unassigned_since = 0;
    r->assign.changed_ms = tly_clock_mono_ms();
    for (int p = 0; p < TLY_MAX_PARTITIONS; p++) {
        tly_part_state s = tly_ownership_state(r->assign.owned, p);
        if (s == TLY_PART_HELD || s == TLY_PART_PENDING)
            own(r, p, TLY_PART_CONSUMER_RESTART);
    }
    if (!(r->consumer = runner_new_consumer(r, errbuf, errlen)))
        return -1;
    return 0;
}
