/* tests/unit/tly_test.h - a minimal test harness in the libevent style: CHECK
 * records a failure and jumps to `end:`, where the test frees what it owns.
 *
 * A test program names its cases in a table, as libevent's testcase_t does, and
 * hands it to tly_test_main:
 *
 *     static const tly_testcase cases[] = {
 *         {"accepts", test_accepts},
 *         {"rejects", test_rejects},
 *         {NULL, NULL}};
 *
 *     int main(int argc, char **argv) { return tly_test_main(argc, argv, cases); }
 *
 * so that one case can be run alone while it is being worked on:
 *
 *     build/tests/test_duration rejects   only that case (several: each, in order)
 *     build/tests/test_duration --list    the names, one a line
 *     build/tests/test_duration           every case, as CTest runs it */
#ifndef TLY_TEST_H
#define TLY_TEST_H

#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int tly_test_failures;
static int tly_test_checks;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        tly_test_checks++;                                                                         \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);               \
            tly_test_failures++;                                                                   \
            goto end;                                                                              \
        }                                                                                          \
    } while (0)

#define CHECK_MSG(cond, ...)                                                                       \
    do {                                                                                           \
        tly_test_checks++;                                                                         \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            tly_test_failures++;                                                                   \
            goto end;                                                                              \
        }                                                                                          \
    } while (0)

#define CHECK_STR(a, b)                                                                            \
    do {                                                                                           \
        const char *check_a_ = (a), *check_b_ = (b);                                               \
        CHECK_MSG(check_a_ &&check_b_ &&strcmp(check_a_, check_b_) == 0, "\"%s\" != \"%s\"",       \
                  check_a_ ? check_a_ : "(null)", check_b_ ? check_b_ : "(null)");                 \
    } while (0)

#define CHECK_INT(a, b)                                                                            \
    do {                                                                                           \
        long long check_a_ = (long long)(a), check_b_ = (long long)(b);                            \
        CHECK_MSG(check_a_ == check_b_, "%lld != %lld", check_a_, check_b_);                       \
    } while (0)

/* One case: a name to select it by and the function that runs it. A table of
 * them ends with {NULL, NULL}. */
typedef struct tly_testcase {
    const char *name;
    void (*fn)(void);
} tly_testcase;

/* A fresh directory for a test's files: /tmp/tally-test-XXXXXX. */
static inline const char *tly_test_dir(void)
{
    static char dir[64];
    snprintf(dir, sizeof(dir), "/tmp/tally-test-XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        exit(1);
    }
    return dir;
}

/* One integer from a query on the database at db_path, on a connection of its
 * own; with attach, that database is ATTACHed as "other" first (to compare two
 * databases with EXCEPT). -1 with a message on stderr if the query fails. */
static inline int64_t tly_test_scalar(const char *db_path, const char *attach, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *stmt = NULL;
    char *attach_sql = NULL;
    int64_t v = -1;
    if (sqlite3_open(db_path, &db) != SQLITE_OK)
        goto done;
    sqlite3_busy_timeout(db, 5000);
    if (attach) {
        /* %Q: any path length, quotes in it escaped (a fixed buffer would cut
         * a long path, and gcc says so once the caller's 4096-byte path is
         * inlined here). */
        if (!(attach_sql = sqlite3_mprintf("ATTACH %Q AS other", attach)) ||
            sqlite3_exec(db, attach_sql, NULL, NULL, NULL) != SQLITE_OK)
            goto done;
    }
    if (sqlite3_prepare_v2(db, sql, -1, &stmt, NULL) == SQLITE_OK &&
        sqlite3_step(stmt) == SQLITE_ROW)
        v = sqlite3_column_int64(stmt, 0);
    else
        fprintf(stderr, "tly_test_scalar(%s): %s\n", sql, sqlite3_errmsg(db));
done:
    sqlite3_free(attach_sql);
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    return v;
}

/* The first column of sql's first row on db as an integer; INT64_MIN (and
 * the reason on stderr) when there is none. */
static inline int64_t tly_test_query_int(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *stmt = NULL;
    int64_t v = INT64_MIN;
    if (sqlite3_prepare_v2(db, sql, -1, &stmt, NULL) == SQLITE_OK &&
        sqlite3_step(stmt) == SQLITE_ROW)
        v = sqlite3_column_int64(stmt, 0);
    else
        fprintf(stderr, "tly_test_query_int(%s): %s\n", sql, sqlite3_errmsg(db));
    sqlite3_finalize(stmt);
    return v;
}

/* The same as text, "NULL" for a NULL and "(no row)" for none; the buffer is
 * overwritten by the next call. */
static inline const char *tly_test_query_text(sqlite3 *db, const char *sql)
{
    static char buf[4096];
    sqlite3_stmt *stmt = NULL;
    snprintf(buf, sizeof(buf), "(no row)");
    if (sqlite3_prepare_v2(db, sql, -1, &stmt, NULL) == SQLITE_OK &&
        sqlite3_step(stmt) == SQLITE_ROW)
        snprintf(buf, sizeof(buf), "%s",
                 sqlite3_column_text(stmt, 0) ? (const char *)sqlite3_column_text(stmt, 0)
                                              : "NULL");
    sqlite3_finalize(stmt);
    return buf;
}

static inline const tly_testcase *tly_test_find(const tly_testcase *cases, const char *name)
{
    for (const tly_testcase *c = cases; c->name; c++)
        if (strcmp(c->name, name) == 0)
            return c;
    return NULL;
}

static inline void tly_test_list(FILE *out, const tly_testcase *cases)
{
    for (const tly_testcase *c = cases; c->name; c++)
        fprintf(out, "%s\n", c->name);
}

/* Runs one case and prints "ok   NAME" or "FAIL NAME" on stderr; returns 0 if
 * it passed. A case that ran no check fails too: it returned before testing
 * anything. */
static inline int tly_test_run(const tly_testcase *c)
{
    int failures_before = tly_test_failures, checks_before = tly_test_checks;
    c->fn();
    if (tly_test_checks == checks_before) {
        fprintf(stderr, "%s: no checks ran\n", c->name);
        tly_test_failures++;
    }
    fprintf(stderr, "%s %s\n", tly_test_failures == failures_before ? "ok  " : "FAIL", c->name);
    return tly_test_failures == failures_before ? 0 : -1;
}

/* The whole main of a test program. With no arguments runs every case of
 * `cases` in table order; with case names, runs those in the order given;
 * --list prints the names on stdout. Returns main's exit status: 0 when every
 * case run passed, 1 when one failed, 2 (before running anything) for an
 * unknown name or option, with the valid names on stderr. */
static inline int tly_test_main(int argc, char **argv, const tly_testcase *cases)
{
    const char *program = argc > 0 ? argv[0] : "test";
    int named = 0, ran = 0, failed = 0;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--list") == 0) {
            tly_test_list(stdout, cases);
            return 0;
        }
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            printf("usage: %s [--list] [CASE...]\ncases:\n", program);
            tly_test_list(stdout, cases);
            return 0;
        }
        if (argv[i][0] == '-') {
            fprintf(stderr, "%s: unknown option %s\nusage: %s [--list] [CASE...]\n", program,
                    argv[i], program);
            return 2;
        }
        if (!tly_test_find(cases, argv[i])) {
            fprintf(stderr, "%s: no case named \"%s\"; the cases are:\n", program, argv[i]);
            tly_test_list(stderr, cases);
            return 2;
        }
        named++;
    }
    if (named == 0) {
        for (const tly_testcase *c = cases; c->name; c++, ran++)
            failed += tly_test_run(c) < 0;
    } else {
        for (int i = 1; i < argc; i++, ran++)
            failed += tly_test_run(tly_test_find(cases, argv[i])) < 0;
    }
    if (ran == 0) {
        fprintf(stderr, "no cases ran\n");
        return 1;
    }
    fprintf(stderr, "%d of %d cases failed, %d checks\n", failed, ran, tly_test_checks);
    return failed ? 1 : 0;
}

#endif
