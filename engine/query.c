/* engine/query.c - read-only SQL with an authorizer, a deadline and a row cap. */
#include "query.h"
#include "error.h"

#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct tly_query {
    sqlite3 *db;
    tly_query_options opts;
    int64_t deadline_ms;
    bool timed_out, cancelled;
    char denied[160];      /* why the authorizer refused, for the error message */
    tly_query_error error; /* what the last failed run failed on */
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* PRAGMAs that only read, with or without an argument naming a table. */
static bool pragma_reads_only(const char *name, const char *arg)
{
    static const char *with_arg[] = {"table_info", "table_xinfo",      "index_info", "index_xinfo",
                                     "index_list", "foreign_key_list", "table_list", NULL};
    static const char *no_arg[] = {"user_version",
                                   "schema_version",
                                   "page_count",
                                   "page_size",
                                   "freelist_count",
                                   "database_list",
                                   "collation_list",
                                   "compile_options",
                                   "function_list",
                                   "module_list",
                                   "pragma_list",
                                   "journal_mode",
                                   "data_version",
                                   "encoding",
                                   "table_list",
                                   "application_id",
                                   NULL};
    for (const char **p = with_arg; *p; p++)
        if (strcmp(name, *p) == 0)
            return true;
    for (const char **p = no_arg; *p; p++)
        if (strcmp(name, *p) == 0)
            return arg == NULL;
    return false;
}

static int authorize(void *ctx, int action, const char *a, const char *b, const char *db_name,
                     const char *trigger)
{
    tly_query *q = ctx;
    (void)db_name;
    (void)trigger;
    switch (action) {
    case SQLITE_SELECT:
    case SQLITE_READ:
    case SQLITE_RECURSIVE: return SQLITE_OK;
    case SQLITE_FUNCTION:
        if (b && (strcmp(b, "load_extension") == 0 || strcmp(b, "readfile") == 0 ||
                  strcmp(b, "writefile") == 0 || strcmp(b, "edit") == 0)) {
            snprintf(q->denied, sizeof(q->denied), "function %s() is not allowed", b);
            return SQLITE_DENY;
        }
        return SQLITE_OK;
    case SQLITE_PRAGMA:
        if (pragma_reads_only(a, b))
            return SQLITE_OK;
        snprintf(q->denied, sizeof(q->denied), "PRAGMA %s%s%s is not allowed (read-only queries)",
                 a, b ? " = " : "", b ? b : "");
        return SQLITE_DENY;
    case SQLITE_ATTACH:
    case SQLITE_DETACH:
        snprintf(q->denied, sizeof(q->denied), "ATTACH and DETACH are not allowed");
        return SQLITE_DENY;
    case SQLITE_UPDATE:
        /* Preparing a table-valued PRAGMA function (pragma_table_info(...))
         * makes SQLite ask for this on its own schema table. A user statement
         * that really updated sqlite_master would still need writable_schema
         * (denied above), a writable connection and query_only off. */
        if (a && strcmp(a, "sqlite_master") == 0)
            return SQLITE_OK;
        __attribute__((fallthrough));
    default:
        snprintf(q->denied, sizeof(q->denied),
                 "only SELECT (and read-only PRAGMAs) are allowed: this statement would write "
                 "or change the schema");
        return SQLITE_DENY;
    }
}

static int on_progress(void *ctx)
{
    tly_query *q = ctx;
    if (q->opts.cancel && atomic_load(q->opts.cancel)) {
        q->cancelled = true;
        return 1;
    }
    if (q->deadline_ms && now_ms() > q->deadline_ms) {
        q->timed_out = true;
        return 1;
    }
    return 0;
}

int tly_query_open(const char *path, const tly_query_options *opts, tly_query **out, char *errbuf,
                   size_t errlen)
{
    tly_query *q = calloc(1, sizeof(*q));
    *out = NULL;
    if (!q)
        return tly_error(errbuf, errlen, "out of memory");
    if (opts)
        q->opts = *opts;
    if (sqlite3_open_v2(path, &q->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        tly_error(errbuf, errlen, "cannot open %s: %s", path,
                  q->db ? sqlite3_errmsg(q->db) : "out of memory");
        goto err;
    }
    sqlite3_busy_timeout(q->db, 5000);
    if (q->opts.max_length > 0)
        sqlite3_limit(q->db, SQLITE_LIMIT_LENGTH,
                      q->opts.max_length < INT_MAX ? (int)q->opts.max_length : INT_MAX);
    sqlite3_db_config(q->db, SQLITE_DBCONFIG_DEFENSIVE, 1, NULL);
    sqlite3_db_config(q->db, SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 0, NULL);
    /* A query's temporary b-trees (ORDER BY, DISTINCT) must not grow without
     * bound in memory either; spill them to a temp file. */
    if (sqlite3_exec(q->db, "PRAGMA query_only = 1; PRAGMA temp_store = FILE;", NULL, NULL, NULL) !=
            SQLITE_OK ||
        sqlite3_exec(q->db, "SELECT 1 FROM sqlite_schema LIMIT 1", NULL, NULL, NULL) != SQLITE_OK) {
        tly_error(errbuf, errlen, "cannot read %s: %s", path, sqlite3_errmsg(q->db));
        goto err;
    }
    sqlite3_set_authorizer(q->db, authorize, q);
    sqlite3_progress_handler(q->db, 10000, on_progress, q);
    *out = q;
    return 0;
err:
    tly_query_close(q);
    return -1;
}

void tly_query_close(tly_query *q)
{
    if (!q)
        return;
    sqlite3_close_v2(q->db);
    free(q);
}

static bool only_space_or_comments(const char *s)
{
    while (*s) {
        if (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r' || *s == ';') {
            s++;
        } else if (s[0] == '-' && s[1] == '-') {
            while (*s && *s != '\n')
                s++;
        } else if (s[0] == '/' && s[1] == '*') {
            const char *end = strstr(s + 2, "*/");
            if (!end)
                return true;
            s = end + 2;
        } else {
            return false;
        }
    }
    return true;
}

int64_t tly_query_run(tly_query *q, const char *sql, const tly_query_sink *sink, void *ctx,
                      int *truncated, char *errbuf, size_t errlen)
{
    sqlite3_stmt *stmt = NULL;
    const char *tail = NULL;
    const char **names = NULL;
    int64_t rows = 0;
    int rc, ncols;

    *truncated = 0;
    q->error = TLY_QUERY_ERR_SQL;
    q->denied[0] = '\0';
    q->timed_out = q->cancelled = false;
    q->deadline_ms = q->opts.timeout_ms > 0 ? now_ms() + q->opts.timeout_ms : 0;
    rc = sqlite3_prepare_v2(q->db, sql, -1, &stmt, &tail);
    if (rc != SQLITE_OK) {
        if (q->denied[0])
            q->error = TLY_QUERY_ERR_DENIED;
        tly_error(errbuf, errlen, "%s", q->denied[0] ? q->denied : sqlite3_errmsg(q->db));
        goto err;
    }
    if (!stmt) {
        tly_error(errbuf, errlen, "empty query");
        goto err;
    }
    if (tail && !only_space_or_comments(tail)) {
        tly_error(errbuf, errlen,
                  "one statement at a time, please (found more after the first \";\")");
        goto err;
    }
    if (!sqlite3_stmt_readonly(stmt)) {
        q->error = TLY_QUERY_ERR_DENIED;
        tly_error(errbuf, errlen, "only read-only statements are allowed");
        goto err;
    }
    ncols = sqlite3_column_count(stmt);
    names = calloc((size_t)ncols + 1, sizeof(*names));
    if (!names) {
        q->error = TLY_QUERY_ERR_INTERNAL;
        tly_error(errbuf, errlen, "out of memory");
        goto err;
    }
    for (int i = 0; i < ncols; i++)
        names[i] = sqlite3_column_name(stmt, i);
    if (sink->columns && sink->columns(ctx, ncols, names) != 0)
        goto done;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        if (q->opts.max_rows > 0 && rows == q->opts.max_rows) {
            *truncated = 1;
            break;
        }
        rows++;
        if (sink->row && sink->row(ctx, stmt) != 0)
            break;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        if (q->cancelled) {
            q->error = TLY_QUERY_ERR_CANCELLED;
            tly_error(errbuf, errlen, "query cancelled (the server is stopping)");
        } else if (rc == SQLITE_TOOBIG) {
            q->error = TLY_QUERY_ERR_TOOBIG;
            tly_error(errbuf, errlen, "a value of the result is longer than %lld bytes",
                      (long long)q->opts.max_length);
        } else if (q->timed_out) {
            q->error = TLY_QUERY_ERR_TIMEOUT;
            tly_error(errbuf, errlen, "query interrupted after %lld ms (the time limit)",
                      (long long)q->opts.timeout_ms);
        } else if (q->denied[0]) {
            q->error = TLY_QUERY_ERR_DENIED;
            tly_error(errbuf, errlen, "%s", q->denied);
        } else
            tly_error(errbuf, errlen, "%s", sqlite3_errmsg(q->db));
        goto err;
    }
done:
    free(names);
    sqlite3_finalize(stmt);
    return rows;
err:
    free(names);
    sqlite3_finalize(stmt);
    return -1;
}

tly_query_error tly_query_last_error(const tly_query *q)
{
    return q->error;
}
