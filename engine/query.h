/* engine/query.h - read-only SQL against the live state.
 *
 * A query handle is its own read-only connection. Four locks keep it from
 * changing anything, each enough on its own for most statements: the file is
 * opened read-only, PRAGMA query_only is on, SQLITE_DBCONFIG_DEFENSIVE is set,
 * and an authorizer denies every write, schema change, ATTACH, transaction
 * control, non-read-only PRAGMA and load_extension(). A runaway statement is
 * interrupted after timeout_ms, and at most max_rows rows are returned.
 *
 * Works while another process writes the same WAL database: each statement
 * sees one consistent snapshot. Not thread-safe; one handle per thread. */
#ifndef TLY_QUERY_H
#define TLY_QUERY_H

#include <sqlite3.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct tly_query tly_query;

/* What a failed tly_query_run failed on. */
typedef enum tly_query_error {
    TLY_QUERY_ERR_SQL,      /* syntax, unknown table, more than one statement... */
    TLY_QUERY_ERR_DENIED,   /* a write, ATTACH, PRAGMA that changes something... */
    TLY_QUERY_ERR_TIMEOUT,  /* interrupted at timeout_ms */
    TLY_QUERY_ERR_INTERNAL, /* out of memory */
    TLY_QUERY_ERR_TOOBIG,   /* a value longer than max_length */
    TLY_QUERY_ERR_CANCELLED /* *cancel was set */
} tly_query_error;

typedef struct tly_query_options {
    int64_t timeout_ms; /* 0 = no limit */
    int64_t max_rows;   /* 0 = no limit */
    /* SQLITE_LIMIT_LENGTH: no string, blob or row longer than this many bytes
     * is ever built (zeroblob(1e9) fails at once instead of allocating it).
     * 0 = SQLite's default (1,000,000,000). */
    int64_t max_length;
    /* Non-NULL: the statement stops soon after *cancel becomes true (read
     * from another thread). */
    const atomic_bool *cancel;
} tly_query_options;

/* Callbacks for tly_query_run. Each returns 0 to go on, non-zero to stop. */
typedef struct tly_query_sink {
    int (*columns)(void *ctx, int count, const char *const *names);
    /* The row is read with sqlite3_column_*() on stmt, valid during the call. */
    int (*row)(void *ctx, sqlite3_stmt *stmt);
} tly_query_sink;

/* Opens path read-only. The database must exist. Returns 0 and *out, or -1
 * with errbuf. */
int tly_query_open(const char *path, const tly_query_options *opts, tly_query **out, char *errbuf,
                   size_t errlen);
void tly_query_close(tly_query *query);

/* Runs exactly one statement (trailing ";" and comments allowed). Returns the
 * number of rows delivered, or -1 with errbuf (syntax error, denied statement,
 * timeout). *truncated is set to 1 when max_rows cut the result short. */
int64_t tly_query_run(tly_query *query, const char *sql, const tly_query_sink *sink, void *ctx,
                      int *truncated, char *errbuf, size_t errlen);

/* The kind of the last tly_query_run failure. */
tly_query_error tly_query_last_error(const tly_query *query);

#endif
