/* tests/unit/tly_test.h - a minimal test harness in the libevent style: CHECK
 * records a failure and jumps to `end:`, where the test frees what it owns. */
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

#define CHECK(cond)                                                                        \
    do {                                                                                   \
        tly_test_checks++;                                                                 \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);       \
            tly_test_failures++;                                                           \
            goto end;                                                                      \
        }                                                                                  \
    } while (0)

#define CHECK_MSG(cond, ...)                                                               \
    do {                                                                                   \
        tly_test_checks++;                                                                 \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);       \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fputc('\n', stderr);                                                           \
            tly_test_failures++;                                                           \
            goto end;                                                                      \
        }                                                                                  \
    } while (0)

#define CHECK_STR(a, b)                                                                    \
    do {                                                                                   \
        const char *check_a_ = (a), *check_b_ = (b);                                       \
        CHECK_MSG(check_a_ && check_b_ && strcmp(check_a_, check_b_) == 0,                 \
                  "\"%s\" != \"%s\"", check_a_ ? check_a_ : "(null)",                      \
                  check_b_ ? check_b_ : "(null)");                                         \
    } while (0)

#define CHECK_INT(a, b)                                                                    \
    do {                                                                                   \
        long long check_a_ = (long long)(a), check_b_ = (long long)(b);                    \
        CHECK_MSG(check_a_ == check_b_, "%lld != %lld", check_a_, check_b_);               \
    } while (0)

#define RUN(test)                                                                          \
    do {                                                                                   \
        int before_ = tly_test_failures;                                                   \
        test();                                                                            \
        fprintf(stderr, "%s %s\n", tly_test_failures == before_ ? "ok  " : "FAIL", #test); \
    } while (0)

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
    char attach_sql[600];
    int64_t v = -1;
    if (sqlite3_open(db_path, &db) != SQLITE_OK)
        goto done;
    sqlite3_busy_timeout(db, 5000);
    if (attach) {
        snprintf(attach_sql, sizeof(attach_sql), "ATTACH '%s' AS other", attach);
        if (sqlite3_exec(db, attach_sql, NULL, NULL, NULL) != SQLITE_OK)
            goto done;
    }
    if (sqlite3_prepare_v2(db, sql, -1, &stmt, NULL) == SQLITE_OK && sqlite3_step(stmt) == SQLITE_ROW)
        v = sqlite3_column_int64(stmt, 0);
    else
        fprintf(stderr, "tly_test_scalar(%s): %s\n", sql, sqlite3_errmsg(db));
done:
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    return v;
}

static inline int tly_test_finish(void)
{
    if (tly_test_checks == 0) {
        fprintf(stderr, "no checks ran\n");
        return 1;
    }
    fprintf(stderr, "%d checks, %d failed\n", tly_test_checks, tly_test_failures);
    return tly_test_failures ? 1 : 0;
}

#endif
