/* engine/pipeline.h - a pipeline: JSON events in, SQL state changes out.
 *
 * A pipeline is data, not C: a SQL file (sql/orders.sql, sql/telemetry.sql, or a
 * user's own) that declares a field map and the statements that stage, check,
 * merge and replay events. This module decodes each event (with the fast reader
 * of engine/jsonscan.h, or json-c for what that declines), binds the
 * mapped fields, and runs the statements in batches on the store's connection.
 * See pipeline.c for the file format.
 *
 * Not thread-safe; a pipeline belongs to the thread that uses its store. */
#ifndef TLY_PIPELINE_H
#define TLY_PIPELINE_H

#include "store.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct tly_pipeline tly_pipeline;

/* Events larger than this are rejected without being parsed. */
#define TLY_MAX_EVENT_BYTES (1024 * 1024)

typedef struct tly_event {
    const char *data; /* the raw bytes, borrowed for the duration of the call */
    size_t len;
    int partition; /* the input partition it came from (:partition); 0 offline */
} tly_event;

typedef enum tly_event_status {
    TLY_EVENT_APPLIED = 0,  /* folded into the state */
    TLY_EVENT_SKIPPED = 1,  /* deliberately ignored (e.g. empty data.id) */
    TLY_EVENT_REJECTED = 2, /* malformed or invalid: belongs in a dead-letter place */
    TLY_EVENT_LATE = 3,     /* its event-time window had closed (windowed pipelines):
                               also belongs in a dead-letter place */
} tly_event_status;

typedef struct tly_event_result {
    tly_event_status status;
    char reason[200]; /* why it was skipped, rejected or late; "" when applied */
} tly_event_result;

typedef struct tly_batch_stats {
    int64_t applied, skipped, rejected, late;
    int64_t changes; /* changelog rows the batch appended */
} tly_batch_stats;

/* Flags for tly_pipeline_open. */
#define TLY_PIPELINE_REPLAY_ONLY 1 /* only @replay is used: settings are not checked */

/* Names of the built-in pipelines, NULL-terminated, static storage. */
const char *const *tly_pipeline_builtin_names(void);

/* Opens built-in pipeline `name` (or, if `name` contains a '/' or ends in ".sql",
 * the pipeline file at that path) on `store`. `params` is a NULL-terminated list
 * of "name=value" settings overriding the file's @param defaults, or NULL.
 * The first open of a pipeline on a database records its settings in meta; a
 * later open with different settings (say another window size) fails, because
 * mixing them would silently corrupt the state. Returns 0 and sets *out, or -1
 * with errbuf. The store is borrowed and must outlive the pipeline. */
int tly_pipeline_open(tly_store *store, const char *name, const char *const *params, int flags,
                      tly_pipeline **out, char *errbuf, size_t errlen);

/* Whether `name` names a pipeline file rather than a built-in pipeline: it
 * has a '/' or ends in ".sql". */
bool tly_pipeline_is_file(const char *name);

/* What a pipeline file says of itself, read without a database. */
typedef struct tly_pipeline_info {
    char name[64];          /* @pipeline */
    char source[4096];      /* "sql/orders.sql", or the file's path */
    char input_topic[256];  /* @input, or "" */
    char output_topic[256]; /* @output, or "" */
    bool builtin;           /* one of tly_pipeline_builtin_names() */
    bool derived;           /* @state and @fold (engine/derive.h) */
    char state_table[128];  /* derived: the table @state creates */
} tly_pipeline_info;

/* Reads built-in pipeline `name` or the pipeline file at that path (as
 * tly_pipeline_open names it) and fills *info. Checks the directives only:
 * the SQL is checked when the pipeline opens on a database. Returns 0, or -1
 * with errbuf. */
int tly_pipeline_describe(const char *name, tly_pipeline_info *info, char *errbuf, size_t errlen);

/* Frees the pipeline; NULL is a no-op. */
void tly_pipeline_close(tly_pipeline *pipeline);

const char *tly_pipeline_name(const tly_pipeline *pipeline);
const char *tly_pipeline_entity(const tly_pipeline *pipeline);

/* Applies a batch of events. Each event gets a result in results[i]; rejected
 * and skipped events change nothing. Updates within the batch are coalesced per
 * key, so each changed key gets one changelog row per batch. Runs inside the
 * caller's transaction if one is open (the daemon's commit protocol), else in
 * its own. Returns 0 when every event has its result (some may be rejected), or
 * -1 when the database itself failed (disk full, I/O error): the batch then
 * changed nothing and the caller should roll back its transaction. stats may be
 * NULL. */
int tly_pipeline_apply(tly_pipeline *pipeline, const tly_event *events, size_t count,
                       tly_event_result *results, tly_batch_stats *stats, char *errbuf,
                       size_t errlen);

/* Applies one changelog after-image (see changelog.h) of this pipeline's
 * entity, made by input partition `partition` (bound as :partition);
 * *changed is set to 1 if the state moved, 0 if the key already had key_seq
 * or newer. Returns 0 or -1 with errbuf. */
int tly_pipeline_replay_image(tly_pipeline *pipeline, const char *image, int64_t key_seq,
                              int partition, int *changed, char *errbuf, size_t errlen);

/* Receives one output record: key and value (NUL-terminated, borrowed for the
 * call). Returns 0 to go on. */
typedef int (*tly_emit_fn)(void *ctx, const char *key, size_t key_len, const char *value,
                           size_t value_len);

/* Runs the pipeline's @emit section for the changes with from_seq < seq <=
 * to_seq (normally one batch, inside its transaction) and passes each output
 * record to fn. A pipeline without @emit emits nothing. Returns 0, or -1 with
 * errbuf when a statement or the callback failed. */
int tly_pipeline_emit(tly_pipeline *pipeline, int64_t from_seq, int64_t to_seq, tly_emit_fn fn,
                      void *ctx, char *errbuf, size_t errlen);

/* Whether the pipeline keeps its pending outputs itself (@flush / @flushed),
 * which the daemon's log_compacted, window_stream and state_store need. */
bool tly_pipeline_has_flush(const tly_pipeline *pipeline);

/* Event-time windows: with windowed set, @late judges every event (a late one
 * gets TLY_EVENT_LATE and changes nothing) and @flush / @flushed cover closed
 * windows only. allowed_lateness_ms is bound as :allowed_lateness_ms. Fails if
 * the pipeline has no @late or @flush. */
int tly_pipeline_set_windowed(tly_pipeline *pipeline, bool windowed, int64_t allowed_lateness_ms,
                              char *errbuf, size_t errlen);

/* Runs @flush: every output record pending with a mark <= flush_seq (normally
 * the store's last changelog seq, read in the same transaction) goes to fn.
 * Nothing is forgotten until tly_pipeline_flushed with the same flush_seq,
 * which the caller runs once the records are safely out. A pipeline without
 * @flush emits nothing. Return 0, or -1 with errbuf. */
int tly_pipeline_flush(tly_pipeline *pipeline, int64_t flush_seq, tly_emit_fn fn, void *ctx,
                       char *errbuf, size_t errlen);
int tly_pipeline_flushed(tly_pipeline *pipeline, int64_t flush_seq, char *errbuf, size_t errlen);

/* Whether events may be decoded by the fast reader (on by default) instead of
 * json-c; both give the same results, which tests compare. */
void tly_pipeline_set_fast_json(tly_pipeline *pipeline, bool on);

/* How many events the fast reader has decoded since the pipeline opened. */
int64_t tly_pipeline_fast_json_events(const tly_pipeline *pipeline);

#endif
