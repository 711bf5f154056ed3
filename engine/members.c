/* engine/members.c - the table-valued function tly_each(:each): one row
 * (key, value) per member of the event being staged (see members.h).
 *
 * An eponymous-only virtual table: nothing is stored, the rows are the list
 * the pipeline binds as :each for the statement's run. Without that argument
 * (a query that names tly_each alone) it has no rows. */
#include "members.h"
#include "error.h"

#include <stdlib.h>
#include <string.h>

enum { COL_KEY, COL_VALUE, COL_MEMBERS };

typedef struct {
    sqlite3_vtab base;
} members_vtab;

typedef struct {
    sqlite3_vtab_cursor base;
    const tly_member_list *list; /* NULL: no rows */
    int at;
} members_cursor;

static int members_connect(sqlite3 *db, void *aux, int argc, const char *const *argv,
                           sqlite3_vtab **out, char **err)
{
    members_vtab *vt;
    int rc;
    (void)aux, (void)argc, (void)argv, (void)err;
    rc = sqlite3_declare_vtab(db, "CREATE TABLE x(key TEXT, value TEXT, members HIDDEN)");
    if (rc != SQLITE_OK)
        return rc;
    if (!(vt = sqlite3_malloc(sizeof(*vt))))
        return SQLITE_NOMEM;
    memset(vt, 0, sizeof(*vt));
    *out = &vt->base;
    return SQLITE_OK;
}

static int members_disconnect(sqlite3_vtab *vt)
{
    sqlite3_free(vt);
    return SQLITE_OK;
}

/* The list comes in as the argument (members = ?); without it, no rows. */
static int members_best_index(sqlite3_vtab *vt, sqlite3_index_info *info)
{
    (void)vt;
    info->idxNum = 0;
    info->estimatedCost = 1e9;
    for (int i = 0; i < info->nConstraint; i++) {
        const struct sqlite3_index_constraint *c = &info->aConstraint[i];
        if (c->iColumn == COL_MEMBERS && c->op == SQLITE_INDEX_CONSTRAINT_EQ) {
            if (!c->usable)
                return SQLITE_CONSTRAINT;
            info->aConstraintUsage[i].argvIndex = 1;
            info->aConstraintUsage[i].omit = 1;
            info->idxNum = 1;
            info->estimatedCost = 30;
            info->estimatedRows = 30;
        }
    }
    return SQLITE_OK;
}

static int members_open(sqlite3_vtab *vt, sqlite3_vtab_cursor **out)
{
    members_cursor *c = sqlite3_malloc(sizeof(*c));
    (void)vt;
    if (!c)
        return SQLITE_NOMEM;
    memset(c, 0, sizeof(*c));
    *out = &c->base;
    return SQLITE_OK;
}

static int members_close(sqlite3_vtab_cursor *cur)
{
    sqlite3_free(cur);
    return SQLITE_OK;
}

static int members_filter(sqlite3_vtab_cursor *cur, int idx_num, const char *idx_str, int argc,
                          sqlite3_value **argv)
{
    members_cursor *c = (members_cursor *)cur;
    (void)idx_str;
    c->list =
        idx_num == 1 && argc == 1 ? sqlite3_value_pointer(argv[0], TLY_MEMBERS_POINTER) : NULL;
    c->at = 0;
    return SQLITE_OK;
}

static int members_next(sqlite3_vtab_cursor *cur)
{
    ((members_cursor *)cur)->at++;
    return SQLITE_OK;
}

static int members_eof(sqlite3_vtab_cursor *cur)
{
    const members_cursor *c = (const members_cursor *)cur;
    return !c->list || c->at >= c->list->count;
}

static int members_column(sqlite3_vtab_cursor *cur, sqlite3_context *ctx, int column)
{
    const members_cursor *c = (const members_cursor *)cur;
    const tly_member *m = &c->list->members[c->at];
    /* SQLITE_STATIC: the texts outlive the statement's run (the pipeline
     * frees the event only after it) */
    if (column == COL_KEY)
        sqlite3_result_text(ctx, m->key, m->key_len, SQLITE_STATIC);
    else if (column == COL_VALUE)
        sqlite3_result_text(ctx, m->value, m->value_len, SQLITE_STATIC);
    else
        sqlite3_result_null(ctx);
    return SQLITE_OK;
}

static int members_rowid(sqlite3_vtab_cursor *cur, sqlite_int64 *rowid)
{
    *rowid = ((const members_cursor *)cur)->at + 1;
    return SQLITE_OK;
}

static const sqlite3_module members_module = {
    .iVersion = 0,
    .xCreate = NULL, /* eponymous-only: no CREATE VIRTUAL TABLE */
    .xConnect = members_connect,
    .xBestIndex = members_best_index,
    .xDisconnect = members_disconnect,
    .xDestroy = members_disconnect,
    .xOpen = members_open,
    .xClose = members_close,
    .xFilter = members_filter,
    .xNext = members_next,
    .xEof = members_eof,
    .xColumn = members_column,
    .xRowid = members_rowid,
};

int tly_members_register(sqlite3 *db, char *errbuf, size_t errlen)
{
    sqlite3_stmt *probe = NULL;
    /* Already there when another pipeline opened on this connection: a
     * second registration would replace the module under its statements. */
    if (sqlite3_prepare_v2(db, "SELECT key FROM tly_each", -1, &probe, NULL) == SQLITE_OK) {
        sqlite3_finalize(probe);
        return 0;
    }
    if (sqlite3_create_module_v2(db, "tly_each", &members_module, NULL, NULL) != SQLITE_OK)
        return tly_error(errbuf, errlen, "cannot register tly_each: %s", sqlite3_errmsg(db));
    return 0;
}
