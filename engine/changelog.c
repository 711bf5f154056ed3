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
    char *counters_prefix; /* "pipeline.<name>.p": counters rows that move positions */
    char *input_topic;     /* ... when they were read from this topic (or do not say) */
    char *position_prefix; /* meta key of input partition N = this + N */
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

void tly_replayer_close(tly_replayer *r)
{
    if (!r)
        return;
    for (int i = 0; i < r->pipeline_count; i++)
        tly_pipeline_close(r->pipelines[i]);
    sqlite3_finalize(r->insert_row);
    free(r->only_entity);
    free(r->counters_prefix);
    free(r->input_topic);
    free(r->position_prefix);
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

int tly_replayer_apply_line(tly_replayer *r, const char *line, size_t len,
                            tly_replay_outcome *outcome, char *errbuf, size_t errlen)
{
    json_object *row, *seq, *entity, *key, *key_seq, *image, *delta, *changed_ms, *part;
    sqlite3 *db = tly_store_db(r->store);
    const char *entity_name, *image_text;
    tly_pipeline *pipeline = NULL;
    bool counters;
    int rc = -1;

    memset(outcome, 0, sizeof(*outcome));
    json_tokener_reset(r->tokener);
    row = json_tokener_parse_ex(r->tokener, line, (int)len);
    if (!row)
        return tly_error(errbuf, errlen, "not JSON: %s",
                         json_tokener_error_desc(json_tokener_get_error(r->tokener)));
    seq = member(row, "seq", json_type_int);
    entity = member(row, "entity", json_type_string);
    key = member(row, "key", json_type_string);
    key_seq = member(row, "key_seq", json_type_int);
    image = member(row, "image", json_type_object);
    changed_ms = member(row, "changed_ms", json_type_int);
    part = member(row, "part", json_type_int);
    if (!json_object_object_get_ex(row, "delta", &delta))
        delta = NULL;
    if (!seq || !entity || !key || !key_seq || !image || !changed_ms ||
        json_object_get_int64(seq) <= 0 || json_object_get_int64(key_seq) <= 0) {
        tly_error(errbuf, errlen,
                  "not a changelog row: needs seq, entity, key, key_seq, image, "
                  "changed_ms (see tally changelog export --help)");
        goto done;
    }
    entity_name = json_object_get_string(entity);
    counters = strcmp(entity_name, TLY_CHANGELOG_COUNTERS_ENTITY) == 0;
    if (r->only_entity && strcmp(r->only_entity, entity_name) != 0 && !counters) {
        outcome->foreign = 1;
        outcome->seq = json_object_get_int64(seq);
        rc = 0;
        goto done;
    }
    for (int i = 0; i < r->pipeline_count && !pipeline; i++)
        if (strcmp(tly_pipeline_entity(r->pipelines[i]), entity_name) == 0)
            pipeline = r->pipelines[i];
    if (!pipeline && !counters) {
        tly_error(errbuf, errlen,
                  "unknown entity \"%s\" (pass its pipeline file with --pipeline-file)",
                  entity_name);
        goto done;
    }
    outcome->seq = json_object_get_int64(seq);
    if (outcome->seq > r->next_seq) {
        outcome->gap_from = r->next_seq;
        outcome->gap_to = outcome->seq - 1;
        if (r->stop_at_gaps) {
            outcome->held = 1;
            rc = 0;
            goto done;
        }
    }
    image_text = json_object_to_json_string_ext(image, JSON_C_TO_STRING_PLAIN |
                                                           JSON_C_TO_STRING_NOSLASHESCAPE);
    if (counters
            ? replay_counters(r, json_object_get_string(key), image, &outcome->changed, errbuf,
                              errlen) < 0
            : tly_pipeline_replay_image(pipeline, image_text, json_object_get_int64(key_seq),
                                        part ? json_object_get_int(part) : r->default_partition,
                                        &outcome->changed, errbuf, errlen) < 0)
        goto done;
    sqlite3_bind_int64(r->insert_row, 1, outcome->seq);
    sqlite3_bind_text(r->insert_row, 2, entity_name, -1, SQLITE_STATIC);
    sqlite3_bind_text(r->insert_row, 3, json_object_get_string(key), -1, SQLITE_STATIC);
    sqlite3_bind_int64(r->insert_row, 4, json_object_get_int64(key_seq));
    sqlite3_bind_text(r->insert_row, 5, image_text, -1, SQLITE_STATIC);
    if (delta && !json_object_is_type(delta, json_type_null))
        sqlite3_bind_text(r->insert_row, 6,
                          json_object_to_json_string_ext(delta, JSON_C_TO_STRING_PLAIN |
                                                                    JSON_C_TO_STRING_NOSLASHESCAPE),
                          -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(r->insert_row, 6);
    sqlite3_bind_int64(r->insert_row, 7, json_object_get_int64(changed_ms));
    sqlite3_bind_int(r->insert_row, 8, part ? json_object_get_int(part) : r->default_partition);
    if (sqlite3_step(r->insert_row) != SQLITE_DONE) {
        tly_error(errbuf, errlen, "cannot record changelog row %lld: %s", (long long)outcome->seq,
                  sqlite3_errmsg(db));
        sqlite3_reset(r->insert_row);
        goto done;
    }
    sqlite3_reset(r->insert_row);
    if (outcome->seq >= r->next_seq)
        r->next_seq = outcome->seq + 1;
    rc = 0;
done:
    json_object_put(row);
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
