/* engine/derive.c - the changelog, merge, replay and emit of a @state/@fold
 * pipeline, derived from its state table (see derive.h). */
#include "derive.h"
#include "error.h"
#include "meta.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_STATE_TABLES 8
#define MAX_COLUMNS 64

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

/* Prepares (and with run, steps) every statement of @state, collecting the
 * tables it creates in c. */
static int walk_state(sqlite3 *db, const char *source, int state_line, const char *state_sql,
                      bool run, struct state_check *c, char *errbuf, size_t errlen)
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
        if (stmt && run) {
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

    if (sqlite3_prepare_v2(db, "SELECT name, pk FROM pragma_table_info(?1, 'main') ORDER BY cid",
                           -1, &stmt, NULL) != SQLITE_OK)
        return tly_error(errbuf, errlen, "cannot read table %s: %s", table, sqlite3_errmsg(db));
    sqlite3_bind_text(stmt, 1, table, -1, SQLITE_STATIC);
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(stmt, 0);
        if (strcmp(name, "key_seq") == 0 || strcmp(name, "part") == 0) {
            c->has_engine_columns++;
            continue;
        }
        if (c->n == MAX_COLUMNS) {
            sqlite3_finalize(stmt);
            return tly_error(errbuf, errlen, "table %s has more than %d columns", table,
                             MAX_COLUMNS);
        }
        order[c->n] = sqlite3_column_int(stmt, 1);
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

/* AFTER INSERT and AFTER UPDATE: the key, the event's partition. */
static void append_dirty_trigger(sqlite3_str *s, const char *table, const char *fn,
                                 const char *event, const struct columns *c)
{
    sqlite3_str_appendf(s,
                        "CREATE TEMP TRIGGER \"tly_fold_%w_%s\" AFTER %s ON main.\"%w\" "
                        "WHEN %s() >= 0\nBEGIN\n    INSERT INTO \"tly_dirty_%w\" (",
                        table, event, event, table, fn, table);
    append_pk_list(s, c, "");
    sqlite3_str_appendall(s, ", part) VALUES (");
    append_pk_list(s, c, "NEW.");
    sqlite3_str_appendf(s, ", %s()) ON CONFLICT DO UPDATE SET part = excluded.part;\nEND;\n", fn);
}

/* The temporary table of changed keys and its triggers. A delete while
 * @fold runs can only be INSERT OR REPLACE making room (a DELETE statement
 * is refused): the replaced row's key_seq is kept so the new row goes on
 * from it. */
static char *setup_sql(const char *table, const char *fn, const struct columns *c)
{
    sqlite3_str *s = sqlite3_str_new(NULL);
    sqlite3_str_appendf(s,
                        "DROP TRIGGER IF EXISTS temp.\"tly_fold_%w_INSERT\";\n"
                        "DROP TRIGGER IF EXISTS temp.\"tly_fold_%w_UPDATE\";\n"
                        "DROP TRIGGER IF EXISTS temp.\"tly_fold_%w_DELETE\";\n"
                        "CREATE TEMP TABLE IF NOT EXISTS \"tly_dirty_%w\" (",
                        table, table, table, table);
    append_pk_list(s, c, "");
    sqlite3_str_appendall(s, ", part INTEGER NOT NULL, prev_seq INTEGER NOT NULL DEFAULT 0, "
                             "PRIMARY KEY (");
    append_pk_list(s, c, "");
    sqlite3_str_appendall(s, "));\n");
    append_dirty_trigger(s, table, fn, "INSERT", c);
    append_dirty_trigger(s, table, fn, "UPDATE", c);
    sqlite3_str_appendf(s,
                        "CREATE TEMP TRIGGER \"tly_fold_%w_DELETE\" AFTER DELETE ON main.\"%w\" "
                        "WHEN %s() >= 0\nBEGIN\n    INSERT INTO \"tly_dirty_%w\" (",
                        table, table, fn, table);
    append_pk_list(s, c, "");
    sqlite3_str_appendall(s, ", part, prev_seq) VALUES (");
    append_pk_list(s, c, "OLD.");
    sqlite3_str_appendf(s,
                        ", %s(), OLD.key_seq) ON CONFLICT DO UPDATE SET prev_seq = "
                        "max(prev_seq, excluded.prev_seq);\nEND;\n",
                        fn);
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
    sqlite3_str_appendall(s, "key_seq, part)\nSELECT ");
    for (int i = 0; i < c->n; i++)
        sqlite3_str_appendf(s, "json_extract(:image, '$.\"%q\"'), ", c->names[i]);
    sqlite3_str_appendall(s, ":key_seq, :partition WHERE true\nON CONFLICT (");
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
static int state_table(const char *source, int state_line, const char *state_sql, char **table,
                       char *errbuf, size_t errlen)
{
    struct state_check check = {0};
    sqlite3 *scratch = NULL;
    int rc = -1;

    if (sqlite3_open(":memory:", &scratch) != SQLITE_OK) {
        tly_error(errbuf, errlen, "out of memory");
        goto done;
    }
    if (walk_state(scratch, source, state_line, state_sql, true, &check, errbuf, errlen) < 0)
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
    static int next_fn; /* a function per pipeline: two may share a connection */
    struct columns cols = {0};
    int rc = -1;

    if (read_columns(db, out->table, &cols, errbuf, errlen) < 0)
        goto done;
    snprintf(out->fn, sizeof(out->fn), "tly_fold_part_%d",
             __atomic_add_fetch(&next_fn, 1, __ATOMIC_RELAXED));
    out->setup_sql = setup_sql(out->table, out->fn, &cols);
    out->merge_sql = merge_sql(out->table, &cols);
    out->replay_sql = replay_sql(out->table, &cols);
    out->emit_sql = emit_sql(entity);
    out->keys = calloc((size_t)cols.npk + 1, sizeof(char *));
    if (!out->setup_sql || !out->merge_sql || !out->replay_sql || !out->emit_sql || !out->keys) {
        tly_error(errbuf, errlen, "out of memory");
        goto done;
    }
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
    out->part = -1;
    tly_meta_key_state(pipeline, key, sizeof(key));
    if (!(recorded = malloc(cap)))
        return tly_error(errbuf, errlen, "out of memory");
    if (state_table(source, state_line, state_sql, &out->table, errbuf, errlen) < 0)
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
    sqlite3_free(d->setup_sql);
    sqlite3_free(d->merge_sql);
    sqlite3_free(d->replay_sql);
    sqlite3_free(d->emit_sql);
    memset(d, 0, sizeof(*d));
    d->part = -1;
}

static void fold_part(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    (void)argv;
    sqlite3_result_int(ctx, *(const int *)sqlite3_user_data(ctx));
}

int tly_derive_register(sqlite3 *db, tly_derived *d, char *errbuf, size_t errlen)
{
    char *msg = NULL;
    /* With recursive triggers on, the rows INSERT OR REPLACE deletes fire
     * delete triggers (SQLite's rule), which is how setup_sql sees them. */
    if (sqlite3_create_function(db, d->fn, 0, SQLITE_UTF8 | SQLITE_INNOCUOUS, &d->part, fold_part,
                                NULL, NULL) != SQLITE_OK)
        return tly_error(errbuf, errlen, "cannot register %s: %s", d->fn, sqlite3_errmsg(db));
    if (sqlite3_exec(db, "PRAGMA recursive_triggers = ON", NULL, NULL, &msg) != SQLITE_OK ||
        sqlite3_exec(db, d->setup_sql, NULL, NULL, &msg) != SQLITE_OK) {
        tly_error(errbuf, errlen, "cannot set up @fold: %s", msg ? msg : sqlite3_errmsg(db));
        sqlite3_free(msg);
        tly_derive_release(db, d);
        return -1;
    }
    return 0;
}

void tly_derive_release(sqlite3 *db, tly_derived *d)
{
    char *sql;
    if (!d->table || !d->fn[0])
        return;
    /* The triggers first: they call the function. */
    sql = sqlite3_mprintf("DROP TRIGGER IF EXISTS temp.\"tly_fold_%w_INSERT\";"
                          "DROP TRIGGER IF EXISTS temp.\"tly_fold_%w_UPDATE\";"
                          "DROP TRIGGER IF EXISTS temp.\"tly_fold_%w_DELETE\";",
                          d->table, d->table, d->table);
    if (sql)
        sqlite3_exec(db, sql, NULL, NULL, NULL);
    sqlite3_free(sql);
    sqlite3_create_function(db, d->fn, 0, SQLITE_UTF8, NULL, NULL, NULL, NULL);
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
