/* adapters/kafka/recovery.h - bring the state database back before consuming.
 *
 * Three steps, run by `tally run` (and `tally recover`) in this order:
 *
 *   1. tly_recovery_prepare   before the database is opened: check it; if it is
 *                             missing or fails its check, move it aside and
 *                             restore the newest snapshot that verifies
 *                             (manifests from the <prefix>-snapshots topic, the
 *                             failed database's snapshots table, the snapshot
 *                             directory), else start from an empty database
 *   2. tly_recovery_replay    after init_transactions has settled the previous
 *                             instance's last transaction: apply the changelog
 *                             topic after the offsets the database (or the
 *                             restored snapshot) recorded, read_committed,
 *                             idempotent by key_seq
 *   3. tly_recovery_finish    refuse to go on empty when history exists (the
 *                             group has committed input offsets, or snapshots
 *                             existed) unless allow_empty; log one
 *                             event=recovered line; record the figures in meta
 *
 * With dry_run nothing is written: step 1 only verifies, step 2 only counts
 * what it would replay, and the report is the plan. */
#ifndef TLY_RECOVERY_H
#define TLY_RECOVERY_H

#include "partitions.h"
#include "snapshot.h"
#include "store.h"
#include "topics.h"

#include <signal.h>
#include <stdint.h>
#include <stdio.h>

#define TLY_RECOVERY_MAX_CANDIDATES 64

typedef struct tly_recovery_config {
    const char *brokers;
    const char *pipeline;      /* the manifest's key on the snapshots topic */
    const char *pipeline_file; /* a user pipeline's file (its @replay), or NULL */
    const tly_topic_layout *topics;
    const char *group_id; /* its committed input offsets prove history */
    const char *db_path;
    const char *snapshot_dir;
    int changelog;        /* 1: the changelog topic is mirrored and replayed */
    int allow_empty;      /* 1: start empty even when history exists */
    int dry_run;          /* 1: change nothing, report the plan */
    const char *instance; /* the daemon's --instance-id (by_partition: a start
                             restores only its own snapshots), or NULL */
    int by_partition;     /* 1: the daemon takes each input partition over when
                             it is assigned (tly_recovery_take): the start only
                             catches up on the partitions the database holds */
    volatile sig_atomic_t *stop;
} tly_recovery_config;

typedef struct tly_recovery_candidate {
    tly_snapshot_manifest manifest;
    char found_in[32]; /* "topic", "table", "directory", joined by '+' */
    char status[600];  /* "restored", "verifies", "not tried", or why not */
} tly_recovery_candidate;

typedef struct tly_recovery_report {
    int64_t started_ms;     /* monotonic; ttr_ms counts from here */
    char db_state[600];     /* "intact", "missing", or "failed: <why>" */
    int local_has_state;    /* the intact database has applied something */
    char moved_aside[4200]; /* where a failed database went, or "" */
    tly_recovery_candidate candidates[TLY_RECOVERY_MAX_CANDIDATES];
    int candidate_count;
    int chosen;              /* index of the snapshot used, or -1 */
    char snapshot_note[600]; /* why the snapshots topic could not be read, or "" */
    /* changelog offsets the replay starts after, per partition (-1: from the start) */
    int64_t start_offsets[TLY_MAX_PARTITIONS];
    int changelog_partitions;
    int64_t end_offsets[TLY_MAX_PARTITIONS]; /* high watermarks when the replay began */
    int held_partitions;                     /* input partitions the database holds (0: it knows
                                                none, and every changelog partition is replayed) */
    int64_t records_replayed, bytes_replayed;
    int64_t input_reread;   /* changelog off: input records behind the group's
                               committed offsets, read again by the consumer */
    int history_partitions; /* input partitions with committed offsets (-1: unknown) */
    const char *source;     /* "local", "snapshot", "changelog" or "new" */
    int refused;            /* finish refused to start empty */
    int64_t ttr_ms;
} tly_recovery_report;

/* Step 1. Fills *report (started_ms = now). Returns 0, or -1 with errbuf when the
 * database cannot be checked or moved aside. */
int tly_recovery_prepare(const tly_recovery_config *cfg, tly_recovery_report *report, char *errbuf,
                         size_t errlen);

/* Step 2. Replays (dry run: counts) the changelog records of `entity` after
 * report->start_offsets; fills records/bytes_replayed and, per partition, the
 * last changelog offset now reflected in the database in offsets_out (may be
 * NULL). A no-op when cfg->changelog is 0. Returns 0 or -1 with errbuf. */
int tly_recovery_replay(const tly_recovery_config *cfg, const char *entity,
                        tly_recovery_report *report, int64_t *offsets_out, char *errbuf,
                        size_t errlen);

/* Step 3. Returns 0, or -1 with errbuf (saying what is missing) when the state
 * would start empty while history exists and cfg->allow_empty is 0. */
int tly_recovery_finish(const tly_recovery_config *cfg, tly_recovery_report *report, char *errbuf,
                        size_t errlen);

/* After a refusal (and once the database is closed): deletes the empty
 * database this recovery created, so the next start does not take it for an
 * intact one. A no-op otherwise. */
void tly_recovery_discard(const tly_recovery_config *cfg, const tly_recovery_report *rep);

/* ------------------------------------------------------------------------
 * Partitions. Several instances of one consumer group share the input; each
 * database holds the rows of the input partitions its daemon was assigned
 * (their "part" column, migrations/008_partitions.sql).
 * ------------------------------------------------------------------------ */

typedef struct tly_partition_take {
    int partition;        /* in: the input partition */
    const char *source;   /* out: "local" (this database held it), "snapshot",
                             "changelog" (replayed from its start), "new" */
    char snapshot_id[64]; /* out: the snapshot adopted, or "" */
    int64_t records;      /* out: changelog records replayed */
    int64_t ms;           /* out: until it was up to date */
} tly_partition_take;

/* Brings the given input partitions of cfg->db_path up to date before the
 * consumer reads them: from the changelog offset this database recorded for
 * each, or from the newest snapshot in cfg->snapshot_dir (any instance's)
 * that holds it further along, replays changelog partition p to its end,
 * read_committed, and records each in the partitions table. Uses its own
 * connection. Without cfg->brokers only the snapshots are used. Returns
 * TLY_TAKE_DONE, TLY_TAKE_WAIT when a changelog partition still has a
 * transaction open (nothing is changed: try again later), or TLY_TAKE_FAILED
 * with errbuf. */
typedef enum { TLY_TAKE_DONE = 0, TLY_TAKE_WAIT = 1, TLY_TAKE_FAILED = -1 } tly_take_result;
tly_take_result tly_recovery_take(const tly_recovery_config *cfg, const char *entity,
                                  tly_partition_take *takes, int count, char *errbuf,
                                  size_t errlen);

/* Deletes input partition p's rows, positions, counters and partitions row
 * in one transaction on store (revoked: another instance takes it over). */
int tly_recovery_drop(tly_store *store, const tly_recovery_config *cfg, int partition, char *errbuf,
                      size_t errlen);

/* Marks in present[TLY_MAX_PARTITIONS] every input partition the database
 * has anything of. Returns 0 or -1 with errbuf. */
int tly_recovery_present(tly_store *store, const tly_recovery_config *cfg, unsigned char *present,
                         char *errbuf, size_t errlen);

/* Writes the plan (dry run) or what was done, for people, to out. */
void tly_recovery_print(const tly_recovery_config *cfg, const tly_recovery_report *report,
                        FILE *out);

#endif
