/* adapters/kafka/readback.c - reading a topic back: to its end, with
 * read_committed, and the changelog records it holds applied to a database
 * (recovery_int.h). */
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

/* rd_kafka_query_watermark_offsets, waiting out what a topic created a
 * moment ago answers until its partitions have a leader (up to
 * KAFKA_TIMEOUT_MS): not-leader, leader-not-available, and, when
 * unknown_is_new, unknown-topic. Returns librdkafka's error or 0. */
rd_kafka_resp_err_t recovery_query_watermarks(rd_kafka_t *rk, const char *topic, int partition,
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
void recovery_offsets_from_manifest(const tly_snapshot_manifest *m, const char *topic,
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
/* Reading a topic to its end                                                */
/* ------------------------------------------------------------------------ */

/* Reads every partition of topic (only those set in `only`, when not NULL)
 * from after[p] + 1 (after NULL or after[p] < 0: from the start) up to the end
 * the partition has when the read begins, read_committed, passing each
 * message to fn. end_out (may be NULL) gets the high watermarks,
 * *partitions_out the partition count. Returns 0, 1 when the topic does not
 * exist, or -1 with errbuf. */
/* The partition count of topic: 0 and *partitions, 1 when the topic does
 * not exist, -1 with errbuf. */
static int partition_count(rd_kafka_t *rk, const char *topic, int *partitions, char *errbuf,
                           size_t errlen)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_topic_t *t = rd_kafka_topic_new(rk, topic, NULL);
    rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 0, t, &md, KAFKA_TIMEOUT_MS);
    int rc = -1;

    rd_kafka_topic_destroy(t);
    if (!err && md->topic_cnt == 1 &&
        md->topics[0].err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) {
        rc = 1;
    } else if (err || md->topic_cnt != 1 || md->topics[0].err) {
        tly_error(errbuf, errlen, "cannot read metadata of %s: %s", topic,
                  rd_kafka_err2str(err                  ? err
                                   : md->topic_cnt == 1 ? md->topics[0].err
                                                        : RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC));
    } else {
        *partitions = md->topics[0].partition_cnt;
        rc = 0;
    }
    if (md)
        rd_kafka_metadata_destroy(md);
    return rc;
}

/* Polls the assigned reader until `remaining` partitions have reached their
 * end, passing each message to fn. Returns 0 or -1 with errbuf. */
static int consume_to_end(const tly_recovery_config *cfg, rd_kafka_t *rk, const char *topic,
                          int remaining, message_fn fn, void *ctx, char *errbuf, size_t errlen)
{
    bool done[TLY_MAX_PARTITIONS] = {false};
    while (remaining > 0) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 1000);
        int rc = 0;
        if (cfg->stop && *cfg->stop) {
            if (m)
                rd_kafka_message_destroy(m);
            return tly_error(errbuf, errlen, "stopped during recovery");
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
            rc = tly_error(errbuf, errlen, "reading %s: %s", topic, rd_kafka_message_errstr(m));
        } else {
            rc = fn(ctx, m, errbuf, errlen) < 0 ? -1 : 0;
        }
        rd_kafka_message_destroy(m);
        if (rc < 0)
            return -1;
    }
    return 0;
}

int recovery_read_to_end(const tly_recovery_config *cfg, const char *topic, const int64_t *after,
                         const unsigned char *only, int64_t *end_out, int *partitions_out,
                         message_fn fn, void *ctx, char *errbuf, size_t errlen)
{
    rd_kafka_t *rk = tly_kconf_reader(cfg->brokers, NULL, errbuf, errlen);
    rd_kafka_topic_partition_list_t *assignment = rd_kafka_topic_partition_list_new(8);
    int partitions = 0, remaining = 0, rc = -1;

    if (!rk || (rc = partition_count(rk, topic, &partitions, errbuf, errlen)) != 0)
        goto out;
    rc = -1;
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
        if ((err = recovery_query_watermarks(rk, topic, p, true, &low, &high))) {
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
    rc = consume_to_end(cfg, rk, topic, remaining, fn, ctx, errbuf, errlen);
out:
    if (partitions_out)
        *partitions_out = partitions;
    rd_kafka_topic_partition_list_destroy(assignment);
    if (rk) {
        rd_kafka_consumer_close(rk);
        rd_kafka_destroy(rk);
    }
    return rc;
}

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

int recovery_on_changelog_record(void *ctx, const rd_kafka_message_t *m, char *errbuf,
                                 size_t errlen)
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
            tly_store *store = tly_replayer_store(c->replayer);
            c->moved[m->partition] = 1;
            if (++c->in_txn >= REPLAY_COMMIT_EVERY) {
                if (recovery_replay_commit(c, errbuf, errlen) < 0 ||
                    tly_store_begin(store, errbuf, errlen) < 0)
                    return -1;
                c->in_txn = 0;
            }
        }
    }
    return 0;
}

int recovery_replay_commit(struct replay_ctx *c, char *errbuf, size_t errlen)
{
    tly_store *store = tly_replayer_store(c->replayer);
    for (int p = 0; p < TLY_MAX_PARTITIONS; p++) {
        char key[512];
        if (!c->moved[p])
            continue;
        tly_meta_key_position(TLY_META_CHANGELOG, c->cfg->topics->changelog.name, p, key,
                              sizeof(key));
        if (tly_store_meta_set_int(store, key, c->offsets[p]) < 0)
            return tly_error(errbuf, errlen, "cannot record the changelog offset: %s",
                             sqlite3_errmsg(tly_store_db(store)));
        c->moved[p] = 0;
    }
    return tly_store_commit(store, errbuf, errlen);
}

/* Opens the replayer recovery applies changelog records with: only `entity`
 * (pipelines that share a topic prefix share the changelog topic) and the
 * daemon's counters rows, which also bring the input positions their batches
 * recorded. */
int recovery_open_replayer(const tly_recovery_config *cfg, const char *entity,
                           tly_replayer **replayer, char *errbuf, size_t errlen)
{
    char positions[512];
    const char *files[2] = {cfg->pipeline_file, NULL};

    if (tly_replayer_open(cfg->db_path, files, replayer, errbuf, errlen) < 0)
        return -1;
    tly_meta_key_position_prefix(TLY_META_INPUT, cfg->topics->input.name, positions,
                                 sizeof(positions));
    if (tly_replayer_only_entity(*replayer, entity) < 0 ||
        (cfg->pipeline && tly_replayer_record_positions(*replayer, cfg->pipeline,
                                                        cfg->topics->input.name, positions) < 0))
        return tly_error(errbuf, errlen, "out of memory");
    return 0;
}
