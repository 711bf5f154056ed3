/* engine/derive.c - the changelog, merge, replay and emit of a @state/@fold
 * pipeline, derived from its state table (see derive.h). */
/* The keys @fold changes are seen by SQLite's preupdate hook (Debian builds
 * SQLite with it; CMakeLists.txt checks): triggers would do the same, but a
 * statement that fires triggers inside the batch's savepoint pays for a
 * statement journal, several times the cost of the upsert itself. */
#define SQLITE_ENABLE_PREUPDATE_HOOK 1
#include "derive.h"
#include "error.h"
#include "meta.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_STATE_TABLES 8
#define MAX_COLUMNS 64

static void marks_free(tly_marks *m);

/* What @state creates, seen through the authorizer while it is prepared. */
struct state_check {
    int ntables;
    char *tables[MAX_STATE_TABLES];
    char why[256]; /* set when something is refused */
};

static bool is_schema_table(const char *name)
{
    return name && (strcmp(name, "sqlite_master") == 0 || strcmp(name, "sqlite_schema") == 0 ||
                    strcmp(name, "sqlite_temp_master") == 0);
}

/* @state may create tables, indexes and views, nothing else: a trigger of its
 * own could write outside the state, a temporary table would not survive the
 * connection, and data written here would reach no changelog. */
static int state_authorizer(void *ctx, int action, const char *a1, const char *a2, const char *db,
                            const char *trigger)
{
    struct state_check *c = ctx;
    (void)a2;
    (void)db;
    (void)trigger;
    switch (action) {
    case SQLITE_CREATE_TABLE:
        if (c->ntables == MAX_STATE_TABLES)
            break;
        c->tables[c->ntables++] = strdup(a1);
        return SQLITE_OK;
    case SQLITE_CREATE_INDEX:
    case SQLITE_CREATE_VIEW:
    case SQLITE_READ:
    case SQLITE_SELECT:
    case SQLITE_FUNCTION:
    case SQLITE_REINDEX: return SQLITE_OK;
    case SQLITE_INSERT:
    case SQLITE_UPDATE:
    case SQLITE_DELETE:
        if (is_schema_table(a1))
            return SQLITE_OK; /* how CREATE records itself */
        break;
    default: break;
    }
    if (!c->why[0])
        snprintf(c->why, sizeof(c->why),
                 "@state may only create tables, indexes and views (CREATE TABLE with a "
                 "PRIMARY KEY)");
    return SQLITE_DENY;
}

/* The line `pos` is on, counting from `start_line` at `text`. */
static int line_at(const char *text, const char *pos, int start_line)
{
    int line = start_line;
    for (const char *c = text; c < pos && *c; c++)
        if (*c == '\n')
            line++;
    return line;
}

/* Skips blank lines and "--" comments, so a statement's line is where its
 * first word is. */
static const char *skip_blank(const char *s)
{
    for (;;) {
        while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
            s++;
        if (s[0] != '-' || s[1] != '-')
            return s;
        while (*s && *s != '\n')
            s++;
    }
}

/* Prepares and steps every statement of @state on a scratch database,
 * collecting the tables it creates in c. */
static int walk_state(sqlite3 *db, const char *source, int state_line, const char *state_sql,
                      struct state_check *c, char *errbuf, size_t errlen)
{
    const char *tail = state_sql;
    int rc = 0;

    sqlite3_set_authorizer(db, state_authorizer, c);
    while (rc == 0 && tail && *(tail = skip_blank(tail))) {
        sqlite3_stmt *stmt = NULL;
        const char *at = tail;
        if (sqlite3_prepare_v2(db, tail, -1, &stmt, &tail) != SQLITE_OK) {
            rc = tly_error(errbuf, errlen, "%s:%d: @state: %s", source,
                           line_at(state_sql, at, state_line),
                           c->why[0] ? c->why : sqlite3_errmsg(db));
            break;
        }
        if (stmt) {
            sqlite3_set_authorizer(db, NULL, NULL); /* checked when prepared */
            if (sqlite3_step(stmt) != SQLITE_DONE)
                rc = tly_error(errbuf, errlen, "%s:%d: @state: %s", source,
                               line_at(state_sql, at, state_line), sqlite3_errmsg(db));
            sqlite3_set_authorizer(db, state_authorizer, c);
        }
        sqlite3_finalize(stmt);
    }
    sqlite3_set_authorizer(db, NULL, NULL);
    if (rc == 0 && c->ntables != 1)
        rc = tly_error(errbuf, errlen,
                       "%s:%d: @state must create exactly one table (it creates %d); a pipeline "
                       "with more state tables writes its own @stage, @merge and @replay",
                       source, state_line, c->ntables);
    return rc;
}

/* The state table's own columns (not key_seq and part), and its primary key
 * in key order. */
struct columns {
    int n, npk, has_engine_columns;
    int key_seq_cid;      /* key_seq's column index, -1 before install */
    int cid[MAX_COLUMNS]; /* each name's column index in the table */
    char *names[MAX_COLUMNS];
    int pk[MAX_COLUMNS]; /* pk[k] = index in names of the k-th key column */
};

static void free_columns(struct columns *c)
{
    for (int i = 0; i < c->n; i++)
        free(c->names[i]);
    c->n = 0;
}

static int read_columns(sqlite3 *db, const char *table, struct columns *c, char *errbuf,
                        size_t errlen)
{
    sqlite3_stmt *stmt = NULL;
    int order[MAX_COLUMNS], rc;

    c->key_seq_cid = -1;
    if (sqlite3_prepare_v2(db,
                           "SELECT name, pk, cid FROM pragma_table_info(?1, 'main') ORDER BY cid",
                           -1, &stmt, NULL) != SQLITE_OK)
        return tly_error(errbuf, errlen, "cannot read table %s: %s", table, sqlite3_errmsg(db));
    sqlite3_bind_text(stmt, 1, table, -1, SQLITE_STATIC);
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(stmt, 0);
        if (strcmp(name, "key_seq") == 0 || strcmp(name, "part") == 0) {
            c->has_engine_columns++;
            if (strcmp(name, "key_seq") == 0)
                c->key_seq_cid = sqlite3_column_int(stmt, 2);
            continue;
        }
        if (c->n == MAX_COLUMNS) {
            sqlite3_finalize(stmt);
            return tly_error(errbuf, errlen, "table %s has more than %d columns", table,
                             MAX_COLUMNS);
        }
        order[c->n] = sqlite3_column_int(stmt, 1);
        c->cid[c->n] = sqlite3_column_int(stmt, 2);
        c->names[c->n++] = strdup(name);
    }
    sqlite3_finalize(stmt);
    if (rc != SQLITE_DONE)
        return tly_error(errbuf, errlen, "cannot read table %s: %s", table, sqlite3_errmsg(db));
    for (int k = 1; k <= c->n; k++)
        for (int i = 0; i < c->n; i++)
            if (order[i] == k)
                c->pk[c->npk++] = i;
    return 0;
}

/* ", " between items after the first. */
static void sep(sqlite3_str *s, int i, const char *between)
{
    if (i > 0)
        sqlite3_str_appendall(s, between);
}

/* The changelog key and after-image of row alias (NEW, or a table alias). */
static void append_key(sqlite3_str *s, const struct columns *c, const char *alias)
{
    for (int k = 0; k < c->npk; k++) {
        sep(s, k, " || '#' || ");
        sqlite3_str_appendf(s, "%s.\"%w\"", alias, c->names[c->pk[k]]);
    }
}

static void append_image(sqlite3_str *s, const struct columns *c, const char *alias)
{
    sqlite3_str_appendall(s, "json_object(");
    for (int i = 0; i < c->n; i++) {
        sep(s, i, ", ");
        sqlite3_str_appendf(s, "%Q, %s.\"%w\"", c->names[i], alias, c->names[i]);
    }
    sqlite3_str_appendall(s, ")");
}

static void append_pk_list(sqlite3_str *s, const struct columns *c, const char *prefix)
{
    for (int k = 0; k < c->npk; k++) {
        sep(s, k, ", ");
        sqlite3_str_appendf(s, "%s\"%w\"", prefix, c->names[c->pk[k]]);
    }
}

/* The persistent part: key_seq, part and the changelog trigger. */
static char *install_sql(const char *table, const char *entity, const struct columns *c)
{
    sqlite3_str *s = sqlite3_str_new(NULL);
    sqlite3_str_appendf(
        s,
        "ALTER TABLE main.\"%w\" ADD COLUMN key_seq INTEGER NOT NULL DEFAULT 0;\n"
        "ALTER TABLE main.\"%w\" ADD COLUMN part INTEGER NOT NULL DEFAULT 0;\n"
        "CREATE TRIGGER main.\"tly_%w_changelog\" AFTER UPDATE OF key_seq ON \"%w\"\n"
        "BEGIN\n"
        "    INSERT INTO changelog (entity, key, key_seq, image, delta, "
        "changed_ms, part)\n    VALUES (%Q, ",
        table, table, table, table, entity);
    append_key(s, c, "NEW");
    sqlite3_str_appendall(s, ", NEW.key_seq, ");
    append_image(s, c, "NEW");
    sqlite3_str_appendall(s, ", NULL, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER), "
                             "NEW.part);\nEND;\n");
    return sqlite3_str_finish(s);
}

/* The keys a batch changed, per connection: filled from the marks before
 * the merge (tly_derive_stage_marks). */
static char *setup_sql(const char *table, const struct columns *c)
{
    sqlite3_str *s = sqlite3_str_new(NULL);
    sqlite3_str_appendf(s, "CREATE TEMP TABLE IF NOT EXISTS \"tly_dirty_%w\" (", table);
    append_pk_list(s, c, "");
    sqlite3_str_appendall(s, ", part INTEGER NOT NULL, prev_seq INTEGER NOT NULL DEFAULT 0, "
                             "PRIMARY KEY (");
    append_pk_list(s, c, "");
    sqlite3_str_appendall(s, "));\n");
    return sqlite3_str_finish(s);
}

/* One changed key: INSERT INTO temp.tly_dirty_<t> (keys..., part, prev_seq). */
static char *mark_sql(const char *table, const struct columns *c)
{
    sqlite3_str *s = sqlite3_str_new(NULL);
    sqlite3_str_appendf(s, "INSERT INTO temp.\"tly_dirty_%w\" (", table);
    append_pk_list(s, c, "");
    sqlite3_str_appendall(s, ", part, prev_seq) VALUES (");
    for (int k = 0; k < c->npk + 2; k++)
        sqlite3_str_appendf(s, "%s?%d", k ? ", " : "", k + 1);
    sqlite3_str_appendall(s, ")");
    return sqlite3_str_finish(s);
}

static char *merge_sql(const char *table, const struct columns *c)
{
    sqlite3_str *s = sqlite3_str_new(NULL);
    sqlite3_str_appendf(s,
                        "UPDATE main.\"%w\" AS s SET key_seq = max(s.key_seq, d.prev_seq) + 1, "
                        "part = d.part "
                        "FROM temp.\"tly_dirty_%w\" AS d WHERE ",
                        table, table);
    for (int k = 0; k < c->npk; k++) {
        sep(s, k, " AND ");
        sqlite3_str_appendf(s, "s.\"%w\" = d.\"%w\"", c->names[c->pk[k]], c->names[c->pk[k]]);
    }
    sqlite3_str_appendf(s, ";\nDELETE FROM temp.\"tly_dirty_%w\";\n", table);
    return sqlite3_str_finish(s);
}

static bool is_key_column(const struct columns *c, int i)
{
    for (int k = 0; k < c->npk; k++)
        if (c->pk[k] == i)
            return true;
    return false;
}

static char *replay_sql(const char *table, const struct columns *c)
{
    sqlite3_str *s = sqlite3_str_new(NULL);
    sqlite3_str_appendf(s, "INSERT INTO main.\"%w\" (", table);
    for (int i = 0; i < c->n; i++)
        sqlite3_str_appendf(s, "\"%w\", ", c->names[i]);
    /* VALUES, not SELECT: a one-row insert runs without a statement journal
     * (an INSERT ... SELECT opens and releases one per row replayed) */
    sqlite3_str_appendall(s, "key_seq, part)\nVALUES (");
    for (int i = 0; i < c->n; i++)
        sqlite3_str_appendf(s, "json_extract(:image, '$.\"%q\"'), ", c->names[i]);
    sqlite3_str_appendall(s, ":key_seq, :partition)\nON CONFLICT (");
    append_pk_list(s, c, "");
    sqlite3_str_appendall(s, ") DO UPDATE SET ");
    for (int i = 0; i < c->n; i++)
        if (!is_key_column(c, i))
            sqlite3_str_appendf(s, "\"%w\" = excluded.\"%w\", ", c->names[i], c->names[i]);
    sqlite3_str_appendf(s,
                        "key_seq = excluded.key_seq, part = excluded.part\n"
                        "WHERE excluded.key_seq > \"%w\".key_seq;\n",
                        table);
    return sqlite3_str_finish(s);
}

static char *emit_sql(const char *entity)
{
    return sqlite3_mprintf("SELECT key, image FROM changelog WHERE seq > :from_seq AND seq <= "
                           ":to_seq AND entity = %Q ORDER BY seq;\n",
                           entity);
}

/* The one table @state creates, found by running it on a scratch database:
 * the real one may already hold it (a plain CREATE TABLE would fail there). */
int tly_derive_state_table(const char *source, int state_line, const char *state_sql, char **table,
                           char *errbuf, size_t errlen)
{
    struct state_check check = {0};
    sqlite3 *scratch = NULL;
    int rc = -1;

    if (sqlite3_open(":memory:", &scratch) != SQLITE_OK) {
        tly_error(errbuf, errlen, "out of memory");
        goto done;
    }
    if (walk_state(scratch, source, state_line, state_sql, &check, errbuf, errlen) < 0)
        goto done;
    *table = check.tables[0];
    check.tables[0] = NULL;
    rc = 0;
done:
    for (int i = 0; i < check.ntables; i++)
        free(check.tables[i]);
    sqlite3_close(scratch);
    return rc;
}

/* First open: @state, the engine's columns and trigger, the recorded text. */
static int install(tly_store *store, const char *key, const char *state_sql, const char *entity,
                   const char *table, const char *source, int state_line, char *errbuf,
                   size_t errlen)
{
    sqlite3 *db = tly_store_db(store);
    struct columns cols = {0};
    char *sql = NULL;
    int rc = -1;

    if (tly_store_exec(store, state_sql, errbuf, errlen) < 0 ||
        read_columns(db, table, &cols, errbuf, errlen) < 0)
        goto done;
    if (cols.has_engine_columns) {
        tly_error(errbuf, errlen,
                  "%s:%d: @state: table %s has a column named key_seq or part; the engine "
                  "keeps those on every state row: rename yours",
                  source, state_line, table);
        goto done;
    }
    if (cols.npk == 0) {
        tly_error(errbuf, errlen,
                  "%s:%d: @state: table %s has no PRIMARY KEY; the engine keys the changelog, "
                  "replay and outputs by it",
                  source, state_line, table);
        goto done;
    }
    if (!(sql = install_sql(table, entity, &cols))) {
        tly_error(errbuf, errlen, "out of memory");
        goto done;
    }
    if (tly_store_exec(store, sql, errbuf, errlen) < 0)
        goto done;
    if (tly_store_meta_set_text(store, key, state_sql) < 0) {
        tly_error(errbuf, errlen, "cannot record %s in meta: %s", key, sqlite3_errmsg(db));
        goto done;
    }
    rc = 0;
done:
    sqlite3_free(sql);
    free_columns(&cols);
    return rc;
}

/* The derived SQL and the key columns, from the installed table. */
static int derive_sql(sqlite3 *db, const char *entity, tly_derived *out, char *errbuf,
                      size_t errlen)
{
    struct columns cols = {0};
    int rc = -1;

    if (read_columns(db, out->table, &cols, errbuf, errlen) < 0)
        goto done;
    out->setup_sql = setup_sql(out->table, &cols);
    out->mark_sql = mark_sql(out->table, &cols);
    out->key_seq_cid = cols.key_seq_cid;
    out->merge_sql = merge_sql(out->table, &cols);
    out->replay_sql = replay_sql(out->table, &cols);
    out->emit_sql = emit_sql(entity);
    out->keys = calloc((size_t)cols.npk + 1, sizeof(char *));
    out->key_cids = calloc((size_t)cols.npk + 1, sizeof(int));
    if (!out->setup_sql || !out->mark_sql || !out->merge_sql || !out->replay_sql ||
        !out->emit_sql || !out->keys || !out->key_cids) {
        tly_error(errbuf, errlen, "out of memory");
        goto done;
    }
    for (int k = 0; k < cols.npk; k++)
        out->key_cids[k] = cols.cid[cols.pk[k]];
    for (int k = 0; k < cols.npk; k++)
        if (!(out->keys[out->nkeys++] = strdup(cols.names[cols.pk[k]]))) {
            tly_error(errbuf, errlen, "out of memory");
            goto done;
        }
    rc = 0;
done:
    free_columns(&cols);
    return rc;
}

int tly_derive(tly_store *store, const char *pipeline, const char *entity, const char *source,
               int state_line, const char *state_sql, tly_derived *out, char *errbuf, size_t errlen)
{
    sqlite3 *db = tly_store_db(store);
    char key[160], *recorded = NULL;
    size_t cap = strlen(state_sql) + 2;
    int rc = -1, found;

    memset(out, 0, sizeof(*out));
    tly_meta_key_state(pipeline, key, sizeof(key));
    if (!(recorded = malloc(cap)))
        return tly_error(errbuf, errlen, "out of memory");
    if (tly_derive_state_table(source, state_line, state_sql, &out->table, errbuf, errlen) < 0)
        goto done;
    if (!entity)
        entity = out->table;
    if ((found = tly_store_meta_get_text(store, key, recorded, cap)) < 0) {
        tly_error(errbuf, errlen, "cannot read %s from meta: %s", key, sqlite3_errmsg(db));
        goto done;
    }
    if (found && strcmp(recorded, state_sql) != 0) {
        tly_error(errbuf, errlen,
                  "%s:%d: @state differs from the schema database %s was built with (meta "
                  "%s); a changed schema is refused, never migrated: use a new database, or "
                  "the @state it was built with",
                  source, state_line, tly_store_path(store), key);
        goto done;
    }
    if (!found &&
        install(store, key, state_sql, entity, out->table, source, state_line, errbuf, errlen) < 0)
        goto done;
    if (derive_sql(db, entity, out, errbuf, errlen) < 0)
        goto done;
    rc = 0;
done:
    free(recorded);
    if (rc < 0)
        tly_derived_free(out);
    return rc;
}

void tly_derived_free(tly_derived *d)
{
    free(d->table);
    for (int k = 0; k < d->nkeys; k++)
        free(d->keys[k]);
    free(d->keys);
    free(d->key_cids);
    sqlite3_finalize(d->mark_stmt);
    marks_free(d->marks);
    sqlite3_free(d->setup_sql);
    sqlite3_free(d->mark_sql);
    sqlite3_free(d->merge_sql);
    sqlite3_free(d->replay_sql);
    sqlite3_free(d->emit_sql);
    memset(d, 0, sizeof(*d));
}

/* ------------------------------------------------------------------ */
/* Marks: the keys @fold changed, serialized                           */
/* ------------------------------------------------------------------ */

/* A key is its primary key values, each a type byte ('i' int64, 'f' double,
 * 't' text, 'b' blob: a 4-byte length first, 'n' NULL) and its bytes. */
struct mark {
    unsigned char *key; /* NULL: a free slot */
    size_t len;
    uint64_t hash;
    int part;
    int64_t prev_seq;
};

struct tly_marks {
    struct mark *slots;
    size_t cap, count;
    unsigned char *buf; /* the key being built */
    size_t buf_len, buf_cap;
    bool failed; /* out of memory in the hook: the merge reports it */
};

static bool buf_put(tly_marks *m, const void *data, size_t len)
{
    if (m->buf_len + len > m->buf_cap) {
        size_t cap = (m->buf_cap ? m->buf_cap * 2 : 256) + len;
        unsigned char *grown = realloc(m->buf, cap);
        if (!grown)
            return false;
        m->buf = grown;
        m->buf_cap = cap;
    }
    memcpy(m->buf + m->buf_len, data, len);
    m->buf_len += len;
    return true;
}

static bool put_value(tly_marks *m, sqlite3_value *v)
{
    unsigned char type;
    switch (sqlite3_value_type(v)) {
    case SQLITE_INTEGER: {
        int64_t i = sqlite3_value_int64(v);
        type = 'i';
        return buf_put(m, &type, 1) && buf_put(m, &i, sizeof(i));
    }
    case SQLITE_FLOAT: {
        double f = sqlite3_value_double(v);
        type = 'f';
        return buf_put(m, &type, 1) && buf_put(m, &f, sizeof(f));
    }
    case SQLITE_NULL: type = 'n'; return buf_put(m, &type, 1);
    default: {
        bool text = sqlite3_value_type(v) == SQLITE_TEXT;
        const void *bytes = text ? (const void *)sqlite3_value_text(v) : sqlite3_value_blob(v);
        uint32_t len = (uint32_t)sqlite3_value_bytes(v);
        type = text ? 't' : 'b';
        return buf_put(m, &type, 1) && buf_put(m, &len, sizeof(len)) &&
               (len == 0 || buf_put(m, bytes, len));
    }
    }
}

static uint64_t hash_bytes(const unsigned char *p, size_t len)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}

static bool marks_grow(tly_marks *m)
{
    size_t cap = m->cap ? m->cap * 2 : 1024;
    struct mark *slots = calloc(cap, sizeof(*slots));
    if (!slots)
        return false;
    for (size_t i = 0; i < m->cap; i++)
        if (m->slots[i].key) {
            size_t j = m->slots[i].hash & (cap - 1);
            while (slots[j].key)
                j = (j + 1) & (cap - 1);
            slots[j] = m->slots[i];
        }
    free(m->slots);
    m->slots = slots;
    m->cap = cap;
    return true;
}

/* Marks the key in m->buf: the newest part wins, prev_seq the highest. */
static bool marks_add(tly_marks *m, int part, int64_t prev_seq)
{
    uint64_t h = hash_bytes(m->buf, m->buf_len);
    size_t j;
    if ((m->count + 1) * 2 > m->cap && !marks_grow(m))
        return false;
    for (j = h & (m->cap - 1); m->slots[j].key; j = (j + 1) & (m->cap - 1)) {
        struct mark *k = &m->slots[j];
        if (k->hash == h && k->len == m->buf_len && memcmp(k->key, m->buf, k->len) == 0) {
            k->part = part;
            if (prev_seq > k->prev_seq)
                k->prev_seq = prev_seq;
            return true;
        }
    }
    if (!(m->slots[j].key = malloc(m->buf_len ? m->buf_len : 1)))
        return false;
    memcpy(m->slots[j].key, m->buf, m->buf_len);
    m->slots[j].len = m->buf_len;
    m->slots[j].hash = h;
    m->slots[j].part = part;
    m->slots[j].prev_seq = prev_seq;
    m->count++;
    return true;
}

void tly_derive_forget_marks(tly_derived *d)
{
    tly_marks *m = d->marks;
    if (!m)
        return;
    for (size_t i = 0; i < m->cap && m->count; i++)
        if (m->slots[i].key) {
            free(m->slots[i].key);
            m->slots[i].key = NULL;
            m->count--;
        }
    m->failed = false;
}

static void marks_free(tly_marks *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->cap; i++)
        free(m->slots[i].key);
    free(m->slots);
    free(m->buf);
    free(m);
}

/* The preupdate hook while @fold runs: a change to the state table marks
 * its key. A delete can only be INSERT OR REPLACE making room (@fold may not
 * DELETE): the replaced row's key_seq goes on in the new one. */
static void on_preupdate(void *ctx, sqlite3 *db, int op, const char *zdb, const char *table,
                         sqlite3_int64 old_rowid, sqlite3_int64 new_rowid)
{
    tly_derived *d = ctx;
    tly_marks *m = d->marks;
    int (*get)(sqlite3 *, int, sqlite3_value **) =
        op == SQLITE_DELETE ? sqlite3_preupdate_old : sqlite3_preupdate_new;
    sqlite3_value *v;
    int64_t prev_seq = 0;

    (void)old_rowid;
    (void)new_rowid;
    if (strcmp(zdb, "main") != 0 || strcmp(table, d->table) != 0)
        return;
    m->buf_len = 0;
    for (int k = 0; k < d->nkeys; k++)
        if (get(db, d->key_cids[k], &v) != SQLITE_OK || !put_value(m, v)) {
            m->failed = true;
            return;
        }
    if (op == SQLITE_DELETE && sqlite3_preupdate_old(db, d->key_seq_cid, &v) == SQLITE_OK)
        prev_seq = sqlite3_value_int64(v);
    if (!marks_add(m, d->part, prev_seq))
        m->failed = true;
}

void tly_derive_fold_begin(sqlite3 *db, tly_derived *d, int part)
{
    d->part = part;
    sqlite3_preupdate_hook(db, on_preupdate, d);
}

void tly_derive_fold_end(sqlite3 *db)
{
    sqlite3_preupdate_hook(db, NULL, NULL);
}

/* Binds one serialized key to the first parameters of stmt; returns the
 * next parameter's index. */
static int bind_key(sqlite3_stmt *stmt, const unsigned char *p, const unsigned char *end)
{
    int index = 1;
    while (p < end) {
        unsigned char type = *p++;
        int64_t i;
        double f;
        uint32_t len;
        switch (type) {
        case 'i':
            memcpy(&i, p, sizeof(i));
            p += sizeof(i);
            sqlite3_bind_int64(stmt, index++, i);
            break;
        case 'f':
            memcpy(&f, p, sizeof(f));
            p += sizeof(f);
            sqlite3_bind_double(stmt, index++, f);
            break;
        case 'n': sqlite3_bind_null(stmt, index++); break;
        default:
            memcpy(&len, p, sizeof(len));
            p += sizeof(len);
            if (type == 't')
                sqlite3_bind_text(stmt, index++, (const char *)p, (int)len, SQLITE_STATIC);
            else
                sqlite3_bind_blob(stmt, index++, p, (int)len, SQLITE_STATIC);
            p += len;
            break;
        }
    }
    return index;
}

int tly_derive_stage_marks(tly_derived *d)
{
    tly_marks *m = d->marks;
    int rc = SQLITE_DONE;
    if (m->failed)
        rc = SQLITE_NOMEM;
    for (size_t i = 0; i < m->cap && rc == SQLITE_DONE; i++) {
        struct mark *k = &m->slots[i];
        int index;
        if (!k->key)
            continue;
        index = bind_key(d->mark_stmt, k->key, k->key + k->len);
        sqlite3_bind_int(d->mark_stmt, index, k->part);
        sqlite3_bind_int64(d->mark_stmt, index + 1, k->prev_seq);
        rc = sqlite3_step(d->mark_stmt);
        sqlite3_reset(d->mark_stmt);
        sqlite3_clear_bindings(d->mark_stmt);
    }
    tly_derive_forget_marks(d);
    return rc;
}

int tly_derive_register(sqlite3 *db, tly_derived *d, char *errbuf, size_t errlen)
{
    char *msg = NULL;
    if (sqlite3_exec(db, d->setup_sql, NULL, NULL, &msg) != SQLITE_OK) {
        tly_error(errbuf, errlen, "cannot set up @fold: %s", msg ? msg : sqlite3_errmsg(db));
        sqlite3_free(msg);
        return -1;
    }
    if (!(d->marks = calloc(1, sizeof(*d->marks))) ||
        sqlite3_prepare_v3(db, d->mark_sql, -1, SQLITE_PREPARE_PERSISTENT, &d->mark_stmt, NULL) !=
            SQLITE_OK)
        return tly_error(errbuf, errlen, "cannot set up @fold: %s", sqlite3_errmsg(db));
    return 0;
}

struct fold_check {
    const tly_derived *d;
    char why[256];
};

static bool is_key(const tly_derived *d, const char *column)
{
    for (int k = 0; k < d->nkeys; k++)
        if (strcmp(d->keys[k], column) == 0)
            return true;
    return false;
}

static int fold_authorizer(void *ctx, int action, const char *a1, const char *a2, const char *db,
                           const char *trigger)
{
    struct fold_check *c = ctx;
    if (trigger && strncmp(trigger, "tly_", 4) == 0)
        return SQLITE_OK; /* the engine's own triggers */
    switch (action) {
    case SQLITE_INSERT:
    case SQLITE_UPDATE:
    case SQLITE_DELETE:
        if (db && strcmp(db, "temp") == 0)
            return SQLITE_OK;
        if (strcmp(a1, c->d->table) != 0)
            snprintf(c->why, sizeof(c->why), "@fold writes to %s, outside the state table %s", a1,
                     c->d->table);
        else if (action == SQLITE_DELETE)
            snprintf(c->why, sizeof(c->why),
                     "@fold deletes rows of %s: a deletion would not reach the changelog", a1);
        else if (action == SQLITE_UPDATE && a2 &&
                 (strcmp(a2, "key_seq") == 0 || strcmp(a2, "part") == 0))
            snprintf(c->why, sizeof(c->why), "@fold sets %s.%s, which the engine keeps", a1, a2);
        else if (action == SQLITE_UPDATE && a2 && is_key(c->d, a2))
            snprintf(c->why, sizeof(c->why),
                     "@fold changes %s.%s, a primary key column: the old key would stay in the "
                     "changelog (insert the new key instead)",
                     a1, a2);
        else
            return SQLITE_OK;
        return SQLITE_DENY;
    case SQLITE_READ:
    case SQLITE_SELECT:
    case SQLITE_FUNCTION:
    case SQLITE_RECURSIVE: return SQLITE_OK;
    default:
        snprintf(c->why, sizeof(c->why),
                 "@fold runs once per event: it may insert into and update the state table "
                 "%s, nothing else",
                 c->d->table);
        return SQLITE_DENY;
    }
}

int tly_derive_prepare_fold(sqlite3 *db, const tly_derived *d, const char **tail,
                            sqlite3_stmt **stmt, char *errbuf, size_t errlen)
{
    struct fold_check check = {.d = d};
    int rc;
    sqlite3_set_authorizer(db, fold_authorizer, &check);
    rc = sqlite3_prepare_v3(db, *tail, -1, SQLITE_PREPARE_PERSISTENT, stmt, tail);
    sqlite3_set_authorizer(db, NULL, NULL);
    if (rc != SQLITE_OK && check.why[0])
        return tly_error(errbuf, errlen, "@fold: %s", check.why);
    if (rc != SQLITE_OK)
        return tly_error(errbuf, errlen, "@fold: %s%s", sqlite3_errmsg(db),
                         strstr(sqlite3_errmsg(db), "values were supplied")
                             ? " (the engine keeps two more columns on the state table, key_seq "
                               "and part: name the columns an INSERT gives)"
                             : "");
    return 0;
}
