/* engine/changelog.c - export the changelog as JSON Lines and replay exports.
 * The format is documented in changelog.h. */
#include "changelog.h"
#include "error.h"

#include "pipeline.h"

#include <json-c/json.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define MAX_REPLAY_PIPELINES 16

/* One export line per changelog row; SQLite builds it, and json() re-emits
 * stored JSON exactly, so numbers keep their digits. */
#define ROW_AS_JSON                                                                                \
    "json_object('seq', seq, 'entity', entity, 'key', key, 'key_seq', key_seq, "                   \
    "'image', json(image), 'delta', json(delta), 'changed_ms', changed_ms, 'part', part)"

int64_t tly_changelog_export(const char *db_path, int64_t since_seq, FILE *out,
                             void (*progress)(void *ctx, int64_t rows), void *ctx, char *errbuf,
                             size_t errlen)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *stmt = NULL;
    int64_t rows = 0;
    int rc;

    if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        tly_error(errbuf, errlen, "cannot open %s: %s", db_path,
                  db ? sqlite3_errmsg(db) : "out of memory");
        goto err;
    }
    sqlite3_busy_timeout(db, 5000);
    rc = sqlite3_prepare_v2(db, "SELECT " ROW_AS_JSON " FROM changelog WHERE seq > ?1 ORDER BY seq",
                            -1, &stmt, NULL);
    if (rc != SQLITE_OK) {
        tly_error(errbuf, errlen, "cannot read changelog: %s", sqlite3_errmsg(db));
        goto err;
    }
    sqlite3_bind_int64(stmt, 1, since_seq);
    if (sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK) {
        tly_error(errbuf, errlen, "cannot start read transaction: %s", sqlite3_errmsg(db));
        goto err;
    }
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        const char *line = (const char *)sqlite3_column_text(stmt, 0);
        if (fputs(line, out) == EOF || fputc('\n', out) == EOF) {
            tly_error(errbuf, errlen, "cannot write export: %m");
            goto err_txn;
        }
        if (++rows % 65536 == 0 && progress)
            progress(ctx, rows);
    }
    if (rc != SQLITE_DONE) {
        tly_error(errbuf, errlen, "cannot read changelog: %s", sqlite3_errmsg(db));
        goto err_txn;
    }
    if (fflush(out) == EOF) {
        tly_error(errbuf, errlen, "cannot write export: %m");
        goto err_txn;
    }
    sqlite3_finalize(stmt);
    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    sqlite3_close(db);
    return rows;
err_txn:
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
err:
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    return -1;
}

/* A growable line buffer for the scan. */
struct line {
    char *buf;
    size_t len, cap;
};

static int line_reserve(struct line *l, size_t more)
{
    size_t cap = l->cap ? l->cap : 512;
    char *grown;
    if (l->len + more + 1 <= l->cap)
        return 0;
    while (cap < l->len + more + 1)
        cap *= 2;
    if (!(grown = realloc(l->buf, cap)))
        return -1;
    l->buf = grown;
    l->cap = cap;
    return 0;
}

static void line_put(struct line *l, const char *text, size_t n)
{
    memcpy(l->buf + l->len, text, n);
    l->len += n;
}

/* text as a JSON string, escaped exactly as SQLite's json_object escapes it
 * (jsonAppendString, 3.40): \" and \\, \b \t \n \f \r, other control
 * bytes as \u00XX, everything else as is. */
static int line_put_string(struct line *l, const char *text, size_t n)
{
    if (line_reserve(l, n * 6 + 2) < 0)
        return -1;
    l->buf[l->len++] = '"';
    for (size_t i = 0; i < n; i++) {
        static const char special[32] = {0, 0, 0, 0, 0, 0, 0, 0, 'b', 't', 'n', 0, 'f', 'r'};
        unsigned char c = (unsigned char)text[i];
        if (c == '"' || c == '\\') {
            l->buf[l->len++] = '\\';
        } else if (c <= 0x1f && special[c]) {
            l->buf[l->len++] = '\\';
            c = (unsigned char)special[c];
        } else if (c <= 0x1f) {
            line_put(l, "\\u00", 4);
            l->buf[l->len++] = (char)('0' + (c >> 4));
            c = (unsigned char)"0123456789abcdef"[c & 0xf];
        }
        l->buf[l->len++] = (char)c;
    }
    l->buf[l->len++] = '"';
    return 0;
}

/* Whether text is JSON that json() would give back unchanged: no white
 * space outside its strings. What the triggers store (json_object) is. */
static bool is_minified(const char *text, size_t n)
{
    bool in_string = false;
    for (size_t i = 0; i < n; i++) {
        char c = text[i];
        if (in_string) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
            return false;
        }
    }
    return true;
}

/* Column `col` of stmt as stored JSON (the image or the delta), rendered as
 * json() renders it: as is when minified, else through json() (normalize);
 * SQL NULL as null. */
static int line_put_json(struct line *l, sqlite3_stmt *stmt, int col, sqlite3_stmt *normalize)
{
    const char *text = (const char *)sqlite3_column_text(stmt, col);
    size_t n = (size_t)sqlite3_column_bytes(stmt, col);
    int rc = 0;

    if (!text) {
        if (line_reserve(l, 4) < 0)
            return -1;
        line_put(l, "null", 4);
        return 0;
    }
    if (is_minified(text, n)) {
        if (line_reserve(l, n) < 0)
            return -1;
        line_put(l, text, n);
        return 0;
    }
    sqlite3_bind_text(normalize, 1, text, (int)n, SQLITE_TRANSIENT);
    if (sqlite3_step(normalize) != SQLITE_ROW ||
        line_reserve(l, (size_t)sqlite3_column_bytes(normalize, 0)) < 0)
        rc = -1;
    else
        line_put(l, (const char *)sqlite3_column_text(normalize, 0),
                 (size_t)sqlite3_column_bytes(normalize, 0));
    sqlite3_reset(normalize);
    return rc;
}

static int line_put_int(struct line *l, sqlite3_stmt *stmt, int col)
{
    if (line_reserve(l, 24) < 0)
        return -1;
    if (sqlite3_column_type(stmt, col) == SQLITE_NULL)
        line_put(l, "null", 4);
    else
        l->len += (size_t)snprintf(l->buf + l->len, 24, "%lld",
                                   (long long)sqlite3_column_int64(stmt, col));
    return 0;
}

static int line_put_raw(struct line *l, const char *text)
{
    size_t n = strlen(text);
    if (line_reserve(l, n) < 0)
        return -1;
    line_put(l, text, n);
    return 0;
}

/* The export line of the row stmt stands on (columns: seq, entity, key,
 * key_seq, image, delta, changed_ms, part), byte for byte what ROW_AS_JSON
 * makes of it, built here because SQLite's json_object parses the stored
 * image and delta again (json()) to embed them: most of the daemon's time
 * reading a batch's changes back. */
static int build_line(struct line *l, sqlite3_stmt *stmt, sqlite3_stmt *normalize)
{
    l->len = 0;
    if (line_put_raw(l, "{\"seq\":") < 0 || line_put_int(l, stmt, 0) < 0 ||
        line_put_raw(l, ",\"entity\":") < 0 ||
        line_put_string(l, (const char *)sqlite3_column_text(stmt, 1),
                        (size_t)sqlite3_column_bytes(stmt, 1)) < 0 ||
        line_put_raw(l, ",\"key\":") < 0 ||
        line_put_string(l, (const char *)sqlite3_column_text(stmt, 2),
                        (size_t)sqlite3_column_bytes(stmt, 2)) < 0 ||
        line_put_raw(l, ",\"key_seq\":") < 0 || line_put_int(l, stmt, 3) < 0 ||
        line_put_raw(l, ",\"image\":") < 0 || line_put_json(l, stmt, 4, normalize) < 0 ||
        line_put_raw(l, ",\"delta\":") < 0 || line_put_json(l, stmt, 5, normalize) < 0 ||
        line_put_raw(l, ",\"changed_ms\":") < 0 || line_put_int(l, stmt, 6) < 0 ||
        line_put_raw(l, ",\"part\":") < 0 || line_put_int(l, stmt, 7) < 0 ||
        line_put_raw(l, "}") < 0)
        return -1;
    l->buf[l->len] = '\0';
    return 0;
}

int tly_changelog_scan(tly_store *store, int64_t from_seq, int64_t to_seq, tly_changelog_row_fn fn,
                       void *ctx, char *errbuf, size_t errlen)
{
    sqlite3 *db = tly_store_db(store);
    sqlite3_stmt *stmt = NULL, *normalize = NULL;
    struct line l = {NULL, 0, 0};
    int rc = -1, step;

    if (sqlite3_prepare_v3(db,
                           "SELECT seq, entity, key, key_seq, image, delta, changed_ms, part "
                           "FROM changelog WHERE seq > ?1 AND seq <= ?2 ORDER BY seq",
                           -1, SQLITE_PREPARE_PERSISTENT, &stmt, NULL) != SQLITE_OK ||
        sqlite3_prepare_v3(db, "SELECT json(?1)", -1, SQLITE_PREPARE_PERSISTENT, &normalize,
                           NULL) != SQLITE_OK) {
        tly_error(errbuf, errlen, "cannot read changelog: %s", sqlite3_errmsg(db));
        goto done;
    }
    sqlite3_bind_int64(stmt, 1, from_seq);
    sqlite3_bind_int64(stmt, 2, to_seq);
    while ((step = sqlite3_step(stmt)) == SQLITE_ROW) {
        int part = sqlite3_column_type(stmt, 7) == SQLITE_NULL ? -1 : sqlite3_column_int(stmt, 7);
        if (build_line(&l, stmt, normalize) < 0) {
            tly_error(errbuf, errlen, "cannot read changelog: %s",
                      l.buf ? sqlite3_errmsg(db) : "out of memory");
            goto done;
        }
        if (fn(ctx, sqlite3_column_int64(stmt, 0), (const char *)sqlite3_column_text(stmt, 2),
               (size_t)sqlite3_column_bytes(stmt, 2), part, l.buf, l.len) != 0) {
            tly_error(errbuf, errlen, "changelog scan stopped by the caller");
            goto done;
        }
    }
    if (step != SQLITE_DONE) {
        tly_error(errbuf, errlen, "cannot read changelog: %s", sqlite3_errmsg(db));
        goto done;
    }
    rc = 0;
done:
    sqlite3_finalize(stmt);
    sqlite3_finalize(normalize);
    free(l.buf);
    return rc;
}

struct tly_replayer {
    tly_store *store;
    int pipeline_count;
    tly_pipeline *pipelines[MAX_REPLAY_PIPELINES];
    sqlite3_stmt *insert_row;
    json_tokener *tokener;
    int64_t next_seq; /* the seq that follows everything the target holds */
    int stop_at_gaps;
    int default_partition; /* for rows without "part" */
    char *only_entity;
    char *counters_prefix;       /* "pipeline.<name>.p": counters rows that move positions */
    char *input_topic;           /* ... when they were read from this topic (or do not say) */
    char *position_prefix;       /* meta key of input partition N = this + N */
    tly_pipeline *last_pipeline; /* the entity of the previous row */
    char *scratch;               /* the fast path's copies of a row's strings */
    size_t scratch_cap;
};

int tly_replayer_record_positions(tly_replayer *r, const char *pipeline, const char *topic,
                                  const char *key_prefix)
{
    size_t n = strlen(pipeline) + sizeof("pipeline..p");
    free(r->counters_prefix);
    free(r->input_topic);
    free(r->position_prefix);
    r->counters_prefix = malloc(n);
    r->input_topic = strdup(topic);
    r->position_prefix = strdup(key_prefix);
    if (!r->counters_prefix || !r->input_topic || !r->position_prefix)
        return -1;
    snprintf(r->counters_prefix, n, "pipeline.%s.p", pipeline);
    return 0;
}

int tly_replayer_only_entity(tly_replayer *r, const char *entity)
{
    free(r->only_entity);
    r->only_entity = entity ? strdup(entity) : NULL;
    return entity && !r->only_entity ? -1 : 0;
}

void tly_replayer_stop_at_gaps(tly_replayer *r, int on)
{
    r->stop_at_gaps = on;
}

void tly_replayer_default_partition(tly_replayer *r, int partition)
{
    r->default_partition = partition;
}

int tly_replayer_open(const char *db_path, const char *const *pipeline_files, tly_replayer **out,
                      char *errbuf, size_t errlen)
{
    tly_replayer *r = calloc(1, sizeof(*r));
    tly_store_options opts;

    *out = NULL;
    if (!r)
        return tly_error(errbuf, errlen, "out of memory");
    tly_store_options_init(&opts);
    opts.disable_triggers = 1;
    /* A replay dirties pages all over the state's b-trees between two
     * commits; when they do not fit in the cache, SQLite writes them to the
     * WAL before the commit and again at it. The cache grows only as pages
     * are read, and the connection lives as long as the replay. Measured on
     * an export of 1M new keys (orders, batches of 1M rows): 64 MiB 7.65 s, 1
     * GiB 5.95 s. */
    opts.cache_kib = 1048576;
    if (tly_store_open(db_path, &opts, &r->store, errbuf, errlen) < 0)
        goto err;
    for (const char *const *name = tly_pipeline_builtin_names(); *name; name++)
        if (tly_pipeline_open(r->store, *name, NULL, TLY_PIPELINE_REPLAY_ONLY,
                              &r->pipelines[r->pipeline_count++], errbuf, errlen) < 0)
            goto err;
    for (; pipeline_files && *pipeline_files; pipeline_files++) {
        if (r->pipeline_count == MAX_REPLAY_PIPELINES) {
            tly_error(errbuf, errlen, "too many pipeline files");
            goto err;
        }
        if (tly_pipeline_open(r->store, *pipeline_files, NULL, TLY_PIPELINE_REPLAY_ONLY,
                              &r->pipelines[r->pipeline_count++], errbuf, errlen) < 0)
            goto err;
    }
    if (sqlite3_prepare_v2(tly_store_db(r->store),
                           "INSERT INTO changelog (seq, entity, key, key_seq, image, delta, "
                           "changed_ms, part) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) "
                           "ON CONFLICT (seq) DO NOTHING",
                           -1, &r->insert_row, NULL) != SQLITE_OK) {
        tly_error(errbuf, errlen, "%s", sqlite3_errmsg(tly_store_db(r->store)));
        goto err;
    }
    r->tokener = json_tokener_new();
    if (!r->tokener) {
        tly_error(errbuf, errlen, "out of memory");
        goto err;
    }
    json_tokener_set_flags(r->tokener, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    r->next_seq = tly_store_last_seq(r->store) + 1;
    *out = r;
    return 0;
err:
    tly_replayer_close(r);
    return -1;
}

int tly_replayer_defer_indexes(tly_replayer *r, char *errbuf, size_t errlen)
{
    /* a target that never held a changelog row: its state tables are empty,
     * or hold what no replay can conflict with (checked per table) */
    if (r->next_seq != 1)
        return 0;
    return tly_store_defer_indexes(r->store, errbuf, errlen);
}

int tly_replayer_finish(tly_replayer *r, char *errbuf, size_t errlen)
{
    return tly_store_restore_indexes(r->store, errbuf, errlen);
}

void tly_replayer_close(tly_replayer *r)
{
    char ignored[256];
    if (!r)
        return;
    /* after an error: the indexes come back now, or at the next open */
    if (r->store)
        tly_store_restore_indexes(r->store, ignored, sizeof(ignored));
    for (int i = 0; i < r->pipeline_count; i++)
        tly_pipeline_close(r->pipelines[i]);
    sqlite3_finalize(r->insert_row);
    free(r->only_entity);
    free(r->counters_prefix);
    free(r->input_topic);
    free(r->position_prefix);
    free(r->scratch);
    if (r->tokener)
        json_tokener_free(r->tokener);
    tly_store_close(r->store);
    free(r);
}

tly_store *tly_replayer_store(tly_replayer *r)
{
    return r->store;
}
int64_t tly_replayer_last_seq(tly_replayer *r)
{
    return r->next_seq - 1;
}

/* Fetches a member of the given type; NULL if absent or of another type. */
static json_object *member(json_object *row, const char *name, enum json_type type)
{
    json_object *o;
    if (!json_object_object_get_ex(row, name, &o) || !json_object_is_type(o, type))
        return NULL;
    return o;
}

/* Raises meta `name` to `value` (counters and input positions only grow).
 * Returns 1 if it moved, 0 if not, -1 on error. */
static int raise_meta(sqlite3_stmt *raise, const char *name, int64_t value)
{
    sqlite3_bind_text(raise, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(raise, 2, value);
    if (sqlite3_step(raise) != SQLITE_DONE) {
        sqlite3_reset(raise);
        return -1;
    }
    sqlite3_reset(raise);
    return sqlite3_changes(sqlite3_db_handle(raise)) > 0;
}

/* Replays a counters row as its batch recorded it: each counter in meta
 * rises to the image's value, and - when the row is of the pipeline whose
 * positions the replayer records - the input position of its partition rises
 * to the end of the range the batch consumed ("input":[first,last+1]), the
 * offset that batch wrote to meta after its Kafka commit. Without that a
 * state rebuilt from a snapshot and the changelog would have every batch's
 * counters but the snapshot's positions. */
static int replay_counters(tly_replayer *r, const char *key, json_object *image, int *changed,
                           char *errbuf, size_t errlen)
{
    sqlite3 *db = tly_store_db(r->store);
    sqlite3_stmt *stmt = NULL;
    json_object *input, *topic;
    int rc = -1, moved;

    *changed = 0;
    if (sqlite3_prepare_v2(db,
                           "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) "
                           "DO UPDATE SET value = excluded.value WHERE excluded.value > value",
                           -1, &stmt, NULL) != SQLITE_OK)
        return tly_error(errbuf, errlen, "%s", sqlite3_errmsg(db));
    json_object_object_foreach(image, name, value)
    {
        if (!json_object_is_type(value, json_type_int) || strncmp(name, "pipeline.", 9) != 0)
            continue;
        if ((moved = raise_meta(stmt, name, json_object_get_int64(value))) < 0) {
            tly_error(errbuf, errlen, "cannot restore counter %s: %s", name, sqlite3_errmsg(db));
            goto done;
        }
        *changed |= moved;
    }
    /* A row says which topic its batch read (older rows do not): rows of
     * another input topic, or of another pipeline whose name starts like
     * this one's, move no position. */
    if (r->counters_prefix && strncmp(key, r->counters_prefix, strlen(r->counters_prefix)) == 0 &&
        (!json_object_object_get_ex(image, "topic", &topic) ||
         strcmp(json_object_get_string(topic), r->input_topic) == 0) &&
        json_object_object_get_ex(image, "input", &input) &&
        json_object_is_type(input, json_type_array) && json_object_array_length(input) == 2 &&
        json_object_is_type(json_object_array_get_idx(input, 1), json_type_int)) {
        const char *digits = key + strlen(r->counters_prefix);
        char *end, position[600];
        long partition = strtol(digits, &end, 10);
        snprintf(position, sizeof(position), "%s%ld", r->position_prefix, partition);
        if (end != digits && !*end && partition >= 0 &&
            (moved = raise_meta(stmt, position,
                                json_object_get_int64(json_object_array_get_idx(input, 1)))) != 0) {
            if (moved < 0) {
                tly_error(errbuf, errlen, "cannot restore position %s: %s", position,
                          sqlite3_errmsg(db));
                goto done;
            }
            *changed = 1;
        }
    }
    rc = 0;
done:
    sqlite3_finalize(stmt);
    return rc;
}

int tly_changelog_record_counters(tly_store *store, const char *name, int partition,
                                  const char *topic, int64_t input_from, int64_t input_to,
                                  const char *instance, char *errbuf, size_t errlen)
{
    sqlite3 *db = tly_store_db(store);
    sqlite3_stmt *stmt = NULL;
    char prefix[160], key[160];
    int rc;

    snprintf(prefix, sizeof(prefix), "pipeline.%s.p%d.events_", name, partition);
    snprintf(key, sizeof(key), "pipeline.%s.p%d", name, partition);
    rc = sqlite3_prepare_v2(
        db,
        "INSERT INTO changelog (entity, key, key_seq, image, delta, changed_ms, part) "
        "SELECT '" TLY_CHANGELOG_COUNTERS_ENTITY "', ?2, sum(value), "
        "json_set(json_group_object(key, value), '$.input', json_array(?4, ?5), '$.instance', ?6, "
        "'$.topic', ?7), "
        "NULL, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER), ?3 "
        "FROM meta WHERE substr(key, 1, length(?1)) = ?1 HAVING sum(value) > 0",
        -1, &stmt, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_text(stmt, 1, prefix, -1, SQLITE_STATIC);
        sqlite3_bind_text(stmt, 2, key, -1, SQLITE_STATIC);
        sqlite3_bind_int(stmt, 3, partition);
        sqlite3_bind_int64(stmt, 4, input_from);
        sqlite3_bind_int64(stmt, 5, input_to);
        sqlite3_bind_text(stmt, 6, instance ? instance : "", -1, SQLITE_STATIC);
        sqlite3_bind_text(stmt, 7, topic ? topic : "", -1, SQLITE_STATIC);
        rc = sqlite3_step(stmt);
    }
    sqlite3_finalize(stmt);
    if (rc != SQLITE_DONE)
        return tly_error(errbuf, errlen, "cannot record the counters: %s", sqlite3_errmsg(db));
    return 0;
}

int tly_changelog_sum_counters(tly_store *store, const char *name, char *errbuf, size_t errlen)
{
    static const char *const names[] = {"applied", "skipped", "rejected", "late"};
    sqlite3 *db = tly_store_db(store);
    sqlite3_stmt *stmt = NULL;
    int rc = SQLITE_OK;

    if (sqlite3_prepare_v2(db,
                           "INSERT INTO meta (key, value) "
                           "SELECT ?1, coalesce(sum(value), 0) FROM meta WHERE key GLOB ?2 "
                           "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                           -1, &stmt, NULL) != SQLITE_OK)
        return tly_error(errbuf, errlen, "cannot sum the counters: %s", sqlite3_errmsg(db));
    for (int k = 0; k < 4 && rc == SQLITE_OK; k++) {
        char total[160], pattern[200];
        snprintf(total, sizeof(total), "pipeline.%s.events_%s", name, names[k]);
        snprintf(pattern, sizeof(pattern), "pipeline.%s.p[0-9]*.events_%s", name, names[k]);
        sqlite3_bind_text(stmt, 1, total, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(stmt, 2, pattern, -1, SQLITE_TRANSIENT);
        rc = sqlite3_step(stmt) == SQLITE_DONE ? SQLITE_OK : SQLITE_ERROR;
        sqlite3_reset(stmt);
    }
    sqlite3_finalize(stmt);
    if (rc != SQLITE_OK)
        return tly_error(errbuf, errlen, "cannot sum the counters: %s", sqlite3_errmsg(db));
    return 0;
}

/* The fast path of tly_replayer_apply_line: one pass over the line in C,
 * without building a json-c tree, for the rows the daemon and the export
 * write (entity rows, compact, no escapes in what is kept). It validates what
 * it reads as strictly as the json-c tokener (RFC 8259, UTF-8) and answers
 * "not mine" for anything else - escapes, whitespace inside image or delta,
 * counters rows, numbers json-c would print otherwise, a line json-c would
 * reject - so such lines take the json-c path with its error messages. Image
 * and delta are kept as the line spells them, which for the lines it takes
 * is what json-c would print again. */

#define FAST_MAX_DEPTH 32 /* json-c's default */

/* One changelog row as the fast path read it: spans into the line. */
struct fast_row {
    int64_t seq, key_seq, changed_ms, part;
    int has_part;
    const char *entity, *key, *image, *delta; /* delta NULL: absent or null */
    size_t entity_len, key_len, image_len, delta_len;
};

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

/* A string starting at p (the opening quote); returns the position after the
 * closing quote, or NULL for an escape, a control character or bad UTF-8. */
static const char *scan_string(const char *p, const char *end)
{
    const unsigned char *s = (const unsigned char *)p + 1, *e = (const unsigned char *)end;
    while (s < e) {
        unsigned char c = *s;
        if (c == '"')
            return (const char *)s + 1;
        if (c == '\\' || c < 0x20)
            return NULL;
        if (c < 0x80) {
            s++;
            continue;
        }
        /* UTF-8: the lead byte says how many continuation bytes follow; no
         * overlong forms, no surrogates, nothing above U+10FFFF. */
        int n;
        unsigned int cp;
        if (c >= 0xc2 && c <= 0xdf)
            n = 1, cp = c & 0x1f;
        else if (c >= 0xe0 && c <= 0xef)
            n = 2, cp = c & 0x0f;
        else if (c >= 0xf0 && c <= 0xf4)
            n = 3, cp = c & 0x07;
        else
            return NULL;
        if (e - s <= n)
            return NULL;
        for (int k = 1; k <= n; k++) {
            if ((s[k] & 0xc0) != 0x80)
                return NULL;
            cp = (cp << 6) | (s[k] & 0x3f);
        }
        if ((n == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
            (n == 3 && (cp < 0x10000 || cp > 0x10ffff)))
            return NULL;
        s += n + 1;
    }
    return NULL;
}

/* A number in JSON's grammar; *integer is set when it has no fraction or
 * exponent. Returns the position after it, or NULL. */
static const char *scan_number(const char *p, const char *end, int *integer)
{
    const char *s = p;
    if (s < end && *s == '-')
        s++;
    if (s >= end || *s < '0' || *s > '9')
        return NULL;
    if (*s == '0')
        s++;
    else
        while (s < end && *s >= '0' && *s <= '9')
            s++;
    *integer = 1;
    if (s < end && *s == '.') {
        *integer = 0;
        if (++s >= end || *s < '0' || *s > '9')
            return NULL;
        while (s < end && *s >= '0' && *s <= '9')
            s++;
    }
    if (s < end && (*s == 'e' || *s == 'E')) {
        *integer = 0;
        s++;
        if (s < end && (*s == '+' || *s == '-'))
            s++;
        if (s >= end || *s < '0' || *s > '9')
            return NULL;
        while (s < end && *s >= '0' && *s <= '9')
            s++;
    }
    return s;
}

/* An integer json-c holds as int64 and prints back digit for digit: at most
 * 18 digits, no "-0". Returns 0 and sets *out, or -1. */
static int parse_int(const char *p, const char *end, int64_t *out)
{
    int64_t v = 0;
    int negative = *p == '-';
    const char *s = p + negative;
    if (end - s > 18 || (negative && end - s == 1 && *s == '0'))
        return -1;
    for (; s < end; s++)
        v = v * 10 + (*s - '0');
    *out = negative ? -v : v;
    return 0;
}

/* Any JSON value, compact (no whitespace: the caller keeps its text); returns
 * the position after it, or NULL. */
static const char *scan_value(const char *p, const char *end, int depth)
{
    int integer;
    if (p >= end)
        return NULL;
    switch (*p) {
    case '"': return scan_string(p, end);
    case '{':
    case '[': {
        char close = *p == '{' ? '}' : ']';
        if (depth >= FAST_MAX_DEPTH)
            return NULL;
        if (++p < end && *p == close)
            return p + 1;
        for (;;) {
            if (close == '}') {
                if (p >= end || *p != '"' || !(p = scan_string(p, end)) || p >= end || *p != ':')
                    return NULL;
                p++;
            }
            if (!(p = scan_value(p, end, depth + 1)) || p >= end)
                return NULL;
            if (*p == close)
                return p + 1;
            if (*p++ != ',')
                return NULL;
        }
    }
    case 't': return end - p >= 4 && memcmp(p, "true", 4) == 0 ? p + 4 : NULL;
    case 'f': return end - p >= 5 && memcmp(p, "false", 5) == 0 ? p + 5 : NULL;
    case 'n': return end - p >= 4 && memcmp(p, "null", 4) == 0 ? p + 4 : NULL;
    default: {
        /* json-c prints an integer with its own digits, and a double as
         * written: only integers it could spell otherwise go the slow way */
        const char *after = scan_number(p, end, &integer);
        int64_t ignored;
        if (after && integer && parse_int(p, after, &ignored) < 0)
            return NULL;
        return after;
    }
    }
}

/* Reads a line into *row. Returns 1 when it did, 0 when the json-c path must
 * (which also reports what is wrong with a bad line). */
static int fast_parse(const char *line, size_t len, struct fast_row *row)
{
    const char *p = line, *end = line + len;
    unsigned seen = 0;

    memset(row, 0, sizeof(*row));
    p = skip_ws(p, end);
    if (p >= end || *p++ != '{')
        return 0;
    p = skip_ws(p, end);
    if (p < end && *p == '}')
        return 0;
    for (;;) {
        const char *name, *value, *after;
        size_t name_len;
        unsigned bit = 0;
        int integer;
        if (p >= end || *p != '"' || !(after = scan_string(p, end)))
            return 0;
        name = p + 1;
        name_len = (size_t)(after - p - 2);
        p = skip_ws(after, end);
        if (p >= end || *p++ != ':')
            return 0;
        value = p = skip_ws(p, end);
#define NAME_IS(s) (name_len == sizeof(s) - 1 && memcmp(name, s, sizeof(s) - 1) == 0)
        if (NAME_IS("seq") || NAME_IS("key_seq") || NAME_IS("changed_ms") || NAME_IS("part")) {
            int64_t v;
            int64_t *slot = NAME_IS("seq")       ? &row->seq
                            : NAME_IS("key_seq") ? &row->key_seq
                            : NAME_IS("part")    ? &row->part
                                                 : &row->changed_ms;
            bit = NAME_IS("seq") ? 1 : NAME_IS("key_seq") ? 2 : NAME_IS("part") ? 4 : 8;
            if (bit == 4 && end - p >= 4 && memcmp(p, "null", 4) == 0) {
                p += 4; /* "part":null - as if absent */
            } else {
                if (!(p = scan_number(p, end, &integer)) || !integer || parse_int(value, p, &v) < 0)
                    return 0;
                *slot = v;
                row->has_part |= bit == 4;
            }
        } else if (NAME_IS("entity") || NAME_IS("key")) {
            bit = NAME_IS("entity") ? 16 : 32;
            if (p >= end || *p != '"' || !(p = scan_string(p, end)))
                return 0;
            if (bit == 16)
                row->entity = value + 1, row->entity_len = (size_t)(p - value - 2);
            else
                row->key = value + 1, row->key_len = (size_t)(p - value - 2);
        } else if (NAME_IS("image") || NAME_IS("delta")) {
            bit = NAME_IS("image") ? 64 : 128;
            if (!(p = scan_value(p, end, 1)))
                return 0;
            if (bit == 64) {
                if (*value != '{')
                    return 0;
                row->image = value, row->image_len = (size_t)(p - value);
            } else if (!(p - value == 4 && memcmp(value, "null", 4) == 0)) {
                row->delta = value, row->delta_len = (size_t)(p - value);
            }
        } else if (!(p = scan_value(p, end, 1))) {
            return 0;
        }
#undef NAME_IS
        if (seen & bit) /* a name twice: json-c keeps the last, let it */
            return 0;
        seen |= bit;
        p = skip_ws(p, end);
        if (p < end && *p == '}')
            break;
        if (p >= end || *p++ != ',')
            return 0;
        p = skip_ws(p, end);
    }
    p = skip_ws(p + 1, end);
    /* every field replay needs, sane, and not a counters row (its image is
     * read member by member: json-c) */
    if (p != end || (seen & (1 | 2 | 8 | 16 | 32 | 64)) != (1 | 2 | 8 | 16 | 32 | 64) ||
        row->seq <= 0 || row->key_seq <= 0 || row->seq > TLY_CHANGELOG_MAX_SEQ ||
        row->key_seq > TLY_CHANGELOG_MAX_SEQ || row->part < INT32_MIN || row->part > INT32_MAX ||
        (row->entity_len == sizeof(TLY_CHANGELOG_COUNTERS_ENTITY) - 1 &&
         memcmp(row->entity, TLY_CHANGELOG_COUNTERS_ENTITY, row->entity_len) == 0))
        return 0;
    return 1;
}

/* A changelog row as either path read it, NUL-terminated strings. */
struct replay_row {
    int64_t seq, key_seq, changed_ms;
    int part;
    const char *entity, *key, *image, *delta; /* delta NULL: none */
    json_object *counters_image;              /* a counters row's image (json-c path) */
};

/* Copies the fast path's spans into the replayer's scratch buffer, each
 * NUL-terminated, for the statements and the entity lookup. Returns 0 or -1
 * when out of memory. */
static int fast_row_strings(tly_replayer *r, const struct fast_row *f, struct replay_row *row)
{
    size_t need = f->entity_len + f->key_len + f->image_len + f->delta_len + 4;
    char *s;
    if (need > r->scratch_cap) {
        char *bigger = realloc(r->scratch, need * 2);
        if (!bigger)
            return -1;
        r->scratch = bigger;
        r->scratch_cap = need * 2;
    }
    s = r->scratch;
#define KEEP(field, span, n)                                                                       \
    do {                                                                                           \
        memcpy(s, span, n);                                                                        \
        s[n] = '\0';                                                                               \
        row->field = s;                                                                            \
        s += (n) + 1;                                                                              \
    } while (0)
    KEEP(entity, f->entity, f->entity_len);
    KEEP(key, f->key, f->key_len);
    KEEP(image, f->image, f->image_len);
    if (f->delta)
        KEEP(delta, f->delta, f->delta_len);
    else
        row->delta = NULL;
#undef KEEP
    row->seq = f->seq;
    row->key_seq = f->key_seq;
    row->changed_ms = f->changed_ms;
    row->part = f->has_part ? (int)f->part : r->default_partition;
    row->counters_image = NULL;
    return 0;
}

/* A seq or key_seq as json-c read it: an integer from 1 to
 * TLY_CHANGELOG_MAX_SEQ. json-c holds a larger integer as uint64 (int64
 * reads it as INT64_MAX) and a much larger one as a double; both are refused
 * here, before seq + 1 could overflow. Returns 0, or -1 with errbuf. */
static int check_seq(const char *name, json_object *value, char *errbuf, size_t errlen)
{
    int64_t v = json_object_get_int64(value);
    if (!json_object_is_type(value, json_type_int) || v < 1 || v > TLY_CHANGELOG_MAX_SEQ)
        return tly_error(errbuf, errlen,
                         "not a changelog row: %s must be an integer from 1 to %lld, not %.40s",
                         name, (long long)TLY_CHANGELOG_MAX_SEQ,
                         json_object_to_json_string_ext(value, JSON_C_TO_STRING_PLAIN));
    return 0;
}

/* Reads a line with json-c into *row (strings borrowed from *tree, which
 * the caller puts). Returns 0, or -1 with errbuf for a line that is not a
 * changelog row. */
static int json_row(tly_replayer *r, const char *line, size_t len, json_object **tree,
                    struct replay_row *row, char *errbuf, size_t errlen)
{
    json_object *seq, *entity, *key, *key_seq, *image, *delta, *changed_ms, *part;

    json_tokener_reset(r->tokener);
    *tree = json_tokener_parse_ex(r->tokener, line, (int)len);
    if (!*tree) {
        enum json_tokener_error e = json_tokener_get_error(r->tokener);
        /* json-c says "continue" for text that stops inside a value */
        if (e == json_tokener_continue)
            return tly_error(errbuf, errlen,
                             "not JSON: the line ends inside its JSON (truncated?)");
        return tly_error(errbuf, errlen, "not JSON: %s", json_tokener_error_desc(e));
    }
    entity = member(*tree, "entity", json_type_string);
    key = member(*tree, "key", json_type_string);
    image = member(*tree, "image", json_type_object);
    changed_ms = member(*tree, "changed_ms", json_type_int);
    part = member(*tree, "part", json_type_int);
    if (!json_object_object_get_ex(*tree, "delta", &delta))
        delta = NULL;
    if (!json_object_object_get_ex(*tree, "seq", &seq) ||
        !json_object_object_get_ex(*tree, "key_seq", &key_seq) || !entity || !key || !image ||
        !changed_ms)
        return tly_error(errbuf, errlen,
                         "not a changelog row: needs seq, entity, key, key_seq, image, "
                         "changed_ms (see tally changelog export --help)");
    if (check_seq("seq", seq, errbuf, errlen) < 0 ||
        check_seq("key_seq", key_seq, errbuf, errlen) < 0)
        return -1;
    row->seq = json_object_get_int64(seq);
    row->entity = json_object_get_string(entity);
    row->key = json_object_get_string(key);
    row->key_seq = json_object_get_int64(key_seq);
    row->changed_ms = json_object_get_int64(changed_ms);
    row->part = part ? json_object_get_int(part) : r->default_partition;
    /* the image is re-printed into json-c's own buffer of it, the delta into
     * its own: both live as long as the tree */
    row->image = json_object_to_json_string_ext(image, JSON_C_TO_STRING_PLAIN |
                                                           JSON_C_TO_STRING_NOSLASHESCAPE);
    row->delta = delta && !json_object_is_type(delta, json_type_null)
                     ? json_object_to_json_string_ext(delta, JSON_C_TO_STRING_PLAIN |
                                                                 JSON_C_TO_STRING_NOSLASHESCAPE)
                     : NULL;
    row->counters_image = strcmp(row->entity, TLY_CHANGELOG_COUNTERS_ENTITY) == 0 ? image : NULL;
    return 0;
}

/* Applies a row read by either path and copies it into the changelog. */
static int apply_row(tly_replayer *r, const struct replay_row *row, tly_replay_outcome *outcome,
                     char *errbuf, size_t errlen)
{
    sqlite3 *db = tly_store_db(r->store);
    tly_pipeline *pipeline = NULL;
    bool counters = row->counters_image != NULL;
    sqlite3_int64 written;

    if (r->only_entity && strcmp(r->only_entity, row->entity) != 0 && !counters) {
        outcome->foreign = 1;
        outcome->seq = row->seq;
        return 0;
    }
    if (!counters) {
        /* rows come in long runs of one entity */
        if (r->last_pipeline && strcmp(tly_pipeline_entity(r->last_pipeline), row->entity) == 0)
            pipeline = r->last_pipeline;
        for (int i = 0; i < r->pipeline_count && !pipeline; i++)
            if (strcmp(tly_pipeline_entity(r->pipelines[i]), row->entity) == 0)
                pipeline = r->last_pipeline = r->pipelines[i];
        if (!pipeline) {
            outcome->bad_line = 1;
            return tly_error(errbuf, errlen,
                             "unknown entity \"%s\" (pass its pipeline file with --pipeline-file)",
                             row->entity);
        }
    }
    outcome->seq = row->seq;
    if (outcome->seq > r->next_seq) {
        outcome->gap_from = r->next_seq;
        outcome->gap_to = outcome->seq - 1;
        if (r->stop_at_gaps) {
            outcome->held = 1;
            return 0;
        }
    }
    written = sqlite3_total_changes64(db);
    if (counters ? replay_counters(r, row->key, row->counters_image, &outcome->changed, errbuf,
                                   errlen) < 0
                 : tly_pipeline_replay_image(pipeline, row->image, row->key_seq, row->part,
                                             &outcome->changed, errbuf, errlen) < 0) {
        /* SQLite undoes a failed statement's own changes: when no statement
         * of this row completed, the transaction holds nothing of it (an
         * image without a NOT NULL column, say) */
        outcome->bad_line = sqlite3_total_changes64(db) == written;
        return -1;
    }
    sqlite3_bind_int64(r->insert_row, 1, outcome->seq);
    sqlite3_bind_text(r->insert_row, 2, row->entity, -1, SQLITE_STATIC);
    sqlite3_bind_text(r->insert_row, 3, row->key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(r->insert_row, 4, row->key_seq);
    sqlite3_bind_text(r->insert_row, 5, row->image, -1, SQLITE_STATIC);
    if (row->delta)
        sqlite3_bind_text(r->insert_row, 6, row->delta, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(r->insert_row, 6);
    sqlite3_bind_int64(r->insert_row, 7, row->changed_ms);
    sqlite3_bind_int(r->insert_row, 8, row->part);
    if (sqlite3_step(r->insert_row) != SQLITE_DONE) {
        tly_error(errbuf, errlen, "cannot record changelog row %lld: %s", (long long)outcome->seq,
                  sqlite3_errmsg(db));
        sqlite3_reset(r->insert_row);
        return -1;
    }
    sqlite3_reset(r->insert_row);
    if (outcome->seq >= r->next_seq)
        r->next_seq = outcome->seq + 1;
    return 0;
}

int tly_replayer_apply_line(tly_replayer *r, const char *line, size_t len,
                            tly_replay_outcome *outcome, char *errbuf, size_t errlen)
{
    struct fast_row fast;
    struct replay_row row = {0};
    json_object *tree = NULL;
    int rc = -1;

    memset(outcome, 0, sizeof(*outcome));
    if (fast_parse(line, len, &fast)) {
        if (fast_row_strings(r, &fast, &row) < 0)
            return tly_error(errbuf, errlen, "out of memory");
    } else if (json_row(r, line, len, &tree, &row, errbuf, errlen) < 0) {
        outcome->bad_line = 1;
        goto done;
    }
    rc = apply_row(r, &row, outcome, errbuf, errlen);
done:
    json_object_put(tree);
    return rc;
}

int64_t tly_changelog_rows(tly_store *store)
{
    return tly_store_query_int(tly_store_db(store), "SELECT count(*) FROM changelog", -1);
}

int64_t tly_changelog_prune_bound(tly_store *store, int64_t upto_seq, int64_t cutoff_ms)
{
    sqlite3_stmt *stmt = NULL;
    int64_t below = upto_seq + 1;
    /* The first young row bounds the old ones: the scan reads only rows that
     * are about to go. */
    if (sqlite3_prepare_v2(tly_store_db(store),
                           "SELECT seq FROM changelog WHERE changed_ms >= ?1 AND seq < ?2 "
                           "ORDER BY seq LIMIT 1",
                           -1, &stmt, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(stmt, 1, cutoff_ms);
        sqlite3_bind_int64(stmt, 2, below);
        if (sqlite3_step(stmt) == SQLITE_ROW)
            below = sqlite3_column_int64(stmt, 0);
    }
    sqlite3_finalize(stmt);
    return below;
}

int tly_changelog_prune(tly_store *store, int64_t below, int max_rows, char *errbuf, size_t errlen)
{
    sqlite3 *db = tly_store_db(store);
    sqlite3_stmt *stmt = NULL;
    int rc = -1;
    if (sqlite3_prepare_v2(db,
                           "DELETE FROM changelog WHERE seq < ?1 AND seq < "
                           "(SELECT min(seq) FROM changelog) + ?2",
                           -1, &stmt, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(stmt, 1, below);
        sqlite3_bind_int64(stmt, 2, max_rows);
        if (sqlite3_step(stmt) == SQLITE_DONE)
            rc = sqlite3_changes(db);
    }
    if (rc < 0)
        tly_error(errbuf, errlen, "%s", sqlite3_errmsg(db));
    sqlite3_finalize(stmt);
    return rc;
}

int64_t tly_changelog_max_seq(sqlite3 *db)
{
    return tly_store_query_int(db, "SELECT coalesce(max(seq), 0) FROM changelog", 0);
}
