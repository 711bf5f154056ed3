/* tests/unit/test_jsonscan.c - the fast JSON reader decodes events exactly as
 * json-c does: every event goes through two pipelines on two databases, one
 * with the fast reader and one with json-c only, and the results (status and
 * reason per event) and every table row (types and bytes) must be the same.
 *
 * Events: hand-written edge cases, the orders / telemetry / pageviews shapes
 * spelled many ways, random objects of values of every kind and spelling,
 * and those mangled (cut short, a byte dropped, doubled or replaced). */
#include "tly_test.h"

#include "jsonscan.h"
#include "loadgen.h"
#include "pipeline.h"
#include "store.h"

#include <sqlite3.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>

struct buf {
    char *data;
    size_t len, cap;
};

static void buf_put(struct buf *b, const char *text, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = (b->len + n + 1) * 2;
        char *data = realloc(b->data, cap);
        if (!data)
            abort();
        b->data = data;
        b->cap = cap;
    }
    memcpy(b->data + b->len, text, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void buf_printf(struct buf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    int n;
    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    buf_put(b, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

struct events {
    char **text;
    size_t *len;
    size_t count, cap;
};

static void add_event(struct events *e, const char *text, size_t len)
{
    if (e->count == e->cap) {
        e->cap = e->cap ? e->cap * 2 : 256;
        e->text = realloc(e->text, e->cap * sizeof(*e->text));
        e->len = realloc(e->len, e->cap * sizeof(*e->len));
        if (!e->text || !e->len)
            abort();
    }
    e->text[e->count] = malloc(len + 1);
    if (!e->text[e->count])
        abort();
    memcpy(e->text[e->count], text, len);
    e->text[e->count][len] = '\0';
    e->len[e->count++] = len;
}

static void free_events(struct events *e)
{
    for (size_t i = 0; i < e->count; i++)
        free(e->text[i]);
    free(e->text);
    free(e->len);
    memset(e, 0, sizeof(*e));
}

static uint64_t rng_state = 0x2545f4914f6cdd1dULL;
static uint32_t rnd(uint32_t n)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return (uint32_t)((z ^ (z >> 31)) % n);
}

/* Values of every kind, spelled every way (JSON text). */
static const char *const numbers[] = {"0",
                                      "1",
                                      "-1",
                                      "42",
                                      "007",
                                      "-0",
                                      "-",
                                      "1.",
                                      ".5",
                                      "1.5",
                                      "1.50",
                                      "83.71",
                                      "0.000001",
                                      "0.0000001",
                                      "-2.25",
                                      "1e3",
                                      "1E+3",
                                      "1e-3",
                                      "-1.0E-0",
                                      "0.1e-5",
                                      "1e999",
                                      "-1e999",
                                      "1e",
                                      "1e+",
                                      "123456789.123456",
                                      "9223372036854775807",
                                      "-9223372036854775808",
                                      "9223372036854775806",
                                      "-9223372036854775807",
                                      "9223372036854775808",
                                      "-9223372036854775809",
                                      "18446744073709551615",
                                      "18446744073709551616",
                                      "99999999999999999999999",
                                      "9223372036854.775807",
                                      "1700000000000",
                                      "1700000000",
                                      "1700000000.5",
                                      "253402300799999",
                                      "253402300800000",
                                      "99999999999",
                                      "100000000000",
                                      "-1700000000000",
                                      "NaN",
                                      "Infinity",
                                      "-Infinity",
                                      "01.5",
                                      "+1",
                                      "0x10"};
static const char *const strings[] = {"\"\"",
                                      "\"abc\"",
                                      "\"a\\\"b\"",
                                      "\"a\\\\b\"",
                                      "\"a\\/b\"",
                                      "\"a/b\"",
                                      "\"\\u00e9\"",
                                      "\"\\u00E9t\\u00e9\"",
                                      "\"\\u0041\"",
                                      "\"\\u20ac\"",
                                      "\"\\u0000\"",
                                      "\"a\\u0000b\"",
                                      "\"\\ud83d\\ude00\"",
                                      "\"\\ud83d\"",
                                      "\"\\ude00\"",
                                      "\"\\u12\"",
                                      "\"\\uZZZZ\"",
                                      "\"\\b\\f\\n\\r\\t\"",
                                      "\"\\x41\"",
                                      "\"\\a\"",
                                      "\"\xc3\xa9t\xc3\xa9\"",
                                      "\"\xe2\x82\xac\"",
                                      "\"\xf0\x9f\x98\x80\"",
                                      "\"tab\there\"",
                                      "\"nl\nhere\"",
                                      "\"\x01\"",
                                      "\"\x7f\"",
                                      "\"83.71\"",
                                      "\"83.710000\"",
                                      "\"83.7100001\"",
                                      "\"-0.5\"",
                                      "\" 1.5\"",
                                      "\"1e3\"",
                                      "\"2024-01-02T03:04:05Z\"",
                                      "\"2024-01-02T03:04:05.123+02:00\"",
                                      "\"2024-13-02T03:04:05Z\"",
                                      "\"1700000000000\"",
                                      "\"1700000000\"",
                                      "\"1700000000.5\"",
                                      "\"abc",
                                      "\"\\\"",
                                      "'abc'",
                                      "\"12345678901234567890\"",
                                      "\"o-1\"",
                                      "\"s\\u002d1\""};
static const char *const others[] = {"true",
                                     "false",
                                     "null",
                                     "TRUE",
                                     "True",
                                     "tru",
                                     "nul",
                                     "[]",
                                     "{}",
                                     "[1,2,3]",
                                     "[ 1 ]",
                                     "[1,]",
                                     "[\"a\"]",
                                     "{\"x\":1}",
                                     "{ \"x\" : 1 }",
                                     "{\"x\":\"\\/\"}",
                                     "[1.50,1e3]",
                                     "{\"x\":{\"y\":[true,null]}}",
                                     "[[[[[[]]]]]]",
                                     "{\"x\":1,\"x\":2}",
                                     "{\"x\":1,}",
                                     "{,}",
                                     "[-0]",
                                     "[\"\\u00e9\"]"};

static const char *any_value(void)
{
    switch (rnd(3)) {
    case 0: return numbers[rnd(sizeof(numbers) / sizeof(*numbers))];
    case 1: return strings[rnd(sizeof(strings) / sizeof(*strings))];
    default: return others[rnd(sizeof(others) / sizeof(*others))];
    }
}

/* Now and then whitespace: JSON's own, or (unless clean) \v or \f. */
static void put_space(struct buf *b, bool clean)
{
    static const char *const spaces[] = {" ", "\t", "\n", "\r\n", "  ", "\v", "\f"};
    unsigned r = rnd(40);
    if (r < 4)
        buf_printf(b, "%s", spaces[rnd(r == 0 && !clean ? 7 : 5)]);
}

/* Fields of the capture pipelines and the values that fit them: the first
 * `fits` of `good` decode, the rest are near misses. */
struct key {
    const char *path; /* "a.b": nested */
    const char *const *good;
    size_t good_count, fits;
};
static const char *const good_ids[] = {"\"o-1\"",       "17",           "-3",
                                       "\"s\\u002d1\"", "\"\xc3\xa9\"", "\"\""};
static const char *const good_texts[] = {"\"home\"",
                                         "\"\"",
                                         "\"a\\\"b\\\\c\"",
                                         "\"\\/p\\u00e9\\u20AC\\u007f\"",
                                         "\"\\b\\f\\n\\r\\t|\\u0001\\u001f\"",
                                         "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\""};
static const char *const good_ints[] = {"0", "7", "-12", "9223372036854775806", "1e2", "1.0"};
static const char *const good_decs[] = {"83.71", "\"83.71\"", "1",       "1.50",
                                        "1e3",   "-0.000001", "\"1.5\"", "0.0000001"};
static const char *const good_times[] = {"1700000000000", "0", "253402300799999", "-1", "1.7e12"};
static const char *const good_anys[] = {
    "1700000000000",  "1700000000",   "\"2024-01-02T03:04:05Z\"",
    "\"1700000000\"", "1700000000.5", "1e10"};
static const char *const good_bools[] = {"true", "false", "1", "\"true\""};
static const char *const good_jsons[] = {"{\"a\":[1,2.50,\"x\"]}",
                                         "[]",
                                         "{}",
                                         "1e3",
                                         "null",
                                         "12",
                                         "\"\\\"\\b\\n\xc3\xa9\"",
                                         "[true,false,null,-1.5e-3]",
                                         "{\"a\":{\"b\":{}},\"c\":[[]]}",
                                         "-9223372036854775807",
                                         "\"\\/\"",
                                         "{ \"a\": 1 }",
                                         "-0",
                                         "\"\\u00e9\""};
#define GOOD(a, fits) a, sizeof(a) / sizeof(*a), fits
static const struct key capture_keys[] = {
    {"id", GOOD(good_ids, 5)},           {"alt.id", GOOD(good_ids, 5)},
    {"text", GOOD(good_texts, 6)},       {"n.int", GOOD(good_ints, 4)},
    {"dec", GOOD(good_decs, 7)},         {"alt.dec", GOOD(good_decs, 7)},
    {"tms", GOOD(good_times, 3)},        {"tany", GOOD(good_anys, 4)},
    {"a.b.c", GOOD(good_anys, 4)},       {"flag", GOOD(good_bools, 2)},
    {"j", GOOD(good_jsons, 10)},         {"data.s1", GOOD(good_decs, 7)},
    {"data.s2", GOOD(good_jsons, 10)},   {"data.id", GOOD(good_ids, 5)},
    {"data.skip", GOOD(good_jsons, 14)}, {"other", GOOD(good_jsons, 14)}};

/* A value for key k: mostly one that fits (all of them when clean). */
static const char *value_for(const struct key *k, bool clean)
{
    if (clean)
        return k->good[rnd((uint32_t)k->fits)];
    return rnd(10) < 7 ? k->good[rnd((uint32_t)k->good_count)] : any_value();
}

/* Writes a member's value at path `rest` below its head: "b.c" nests. */
static void put_nested(struct buf *b, const struct key *k, const char *rest, bool clean)
{
    const char *dot = strchr(rest, '.');
    if (dot) {
        buf_printf(b, "\"%.*s\":{\"%s\":%s}", (int)(dot - rest), rest, dot + 1,
                   value_for(k, clean));
        return;
    }
    buf_printf(b, "\"%s\":", rest);
    put_space(b, clean);
    buf_printf(b, "%s", value_for(k, clean));
}

/* One random event over `keys` (members under a common head go into one
 * nested object). Unless clean: values of any kind, any whitespace, and now
 * and then a name twice. */
static void random_event(struct buf *b, const struct key *keys, size_t key_count, bool clean)
{
    bool done[64] = {false};
    b->len = 0;
    put_space(b, clean);
    buf_put(b, "{", 1);
    for (size_t k = 0; k < key_count && k < 64; k++) {
        const char *dot = strchr(keys[k].path, '.');
        size_t head_len = dot ? (size_t)(dot - keys[k].path) : strlen(keys[k].path);
        int members = 0;
        if (done[k] || rnd(10) < 2)
            continue;
        if (b->data[b->len - 1] != '{')
            buf_put(b, ",", 1);
        put_space(b, clean);
        buf_printf(b, "\"%.*s\"", (int)head_len, keys[k].path);
        put_space(b, clean);
        buf_put(b, ":", 1);
        put_space(b, clean);
        if (!dot) {
            buf_printf(b, "%s", value_for(&keys[k], clean));
            put_space(b, clean);
            continue;
        }
        buf_put(b, "{", 1);
        if (rnd(3) == 0) {
            buf_printf(b, "\"pad\":%s", clean ? "1" : any_value());
            members++;
        }
        for (size_t j = k; j < key_count && j < 64; j++) {
            if (strncmp(keys[j].path, keys[k].path, head_len + 1) != 0 || done[j] ||
                (j != k && rnd(10) < 2))
                continue;
            done[j] = true;
            if (members++)
                buf_put(b, ",", 1);
            put_nested(b, &keys[j], keys[j].path + head_len + 1, clean);
            if (!clean && rnd(15) == 0) /* the same name again */
                buf_printf(b, ",\"%s\":%s", keys[j].path + head_len + 1, any_value());
        }
        if (rnd(3) == 0)
            buf_printf(b, "%s\"tail\":%s", members ? "," : "", clean ? "[1]" : any_value());
        buf_put(b, "}", 1);
        put_space(b, clean);
    }
    if (!clean && rnd(15) == 0)
        buf_printf(b, "%s\"id\":%s", b->data[b->len - 1] != '{' ? "," : "", any_value());
    buf_put(b, "}", 1);
    put_space(b, clean);
}

/* Adds the event and, now and then, mangled copies of it. */
static void add_with_mangles(struct events *e, const struct buf *b)
{
    char tmp[8192];
    static const char junk[] = ",:{}[]\"\\ x0-.e\x01\x80";
    add_event(e, b->data, b->len);
    if (b->len == 0 || b->len >= sizeof(tmp) || rnd(4) != 0)
        return;
    add_event(e, b->data, rnd((uint32_t)b->len)); /* cut short */
    {
        size_t at = rnd((uint32_t)b->len);
        memcpy(tmp, b->data, at); /* one byte dropped */
        memcpy(tmp + at, b->data + at + 1, b->len - at - 1);
        add_event(e, tmp, b->len - 1);
        memcpy(tmp, b->data, b->len); /* one byte replaced */
        tmp[at] = junk[rnd(sizeof(junk) - 1)];
        add_event(e, tmp, b->len);
        memcpy(tmp, b->data, at + 1); /* one byte doubled */
        memcpy(tmp + at + 1, b->data + at, b->len - at);
        add_event(e, tmp, b->len + 1);
    }
}

static const char *const edge_cases[] = {
    "",
    " ",
    "{",
    "}",
    "{}",
    " {} ",
    "{} x",
    "{}{}",
    "[]",
    "[{}]",
    "null",
    "true",
    "42",
    "\"s\"",
    "{\"id\":\"a\"",
    "{\"id\":\"a\",}",
    "{\"id\" \"a\"}",
    "{id:\"a\"}",
    "{'id':'a'}",
    "{\"id\":\"a\"}\n",
    "{\"id\":\"a\"}\t\r\n ",
    "{\"id\":\"a\"}\v",
    "\xef\xbb\xbf{\"id\":\"a\"}",
    "{\"id\":\"a\"} // c",
    "{/*c*/\"id\":\"a\"}",
    "{\"id\":\"a\",\"id\":\"b\"}",
    "{\"id\":\"a\",\"id\":null}",
    "{\"id\":null,\"id\":\"b\"}",
    "{\"i\\u0064\":\"a\"}",
    "{\"\":1,\"id\":2}",
    "{\"id\\u0000x\":1}",
    "{\"data\":{\"id\":\"v\",\"id\":\"w\",\"s1\":1}}",
    "{\"data\":[1,2]}",
    "{\"data\":null}",
    "{\"data\":{}}",
    "{\"data\":{\"id\":\"v\"}}",
    "{\"data\":{\"s1\":1.50,\"s2\":{ \"x\" :1}}}",
    "{\"data\":{\"s1\":\"\\/\"}}",
    "{\"data\":{\"s1\":-0}}",
    "{\"data\":{\"s1\":\"\\u00e9\"}}",
    "{\"data\":{\"s1\":1e3}}",
    "{\"j\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}",
    "{\"j\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]"
    "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}",
    "{\"tany\":\"\\u0031\\u0037\\u0030\\u0030\\u0030\\u0030\\u0030\\u0030\\u0030\\u0030\"}",
    "{\"text\":\"a\\u0000b\",\"dec\":\"1\\u00002\",\"tany\":\"1700000000\\u0000x\"}",
    "{\"dec\":\"12\\u00003\"}",
    "{\"a\":{\"b\":{\"c\":null}},\"tany\":5}",
    "{\"a\":{\"b\":null},\"tany\":5}",
    "{\"alt\":{\"id\":1},\"id\":null}",
    "{\"alt\":{\"dec\":\"1.5\"},\"dec\":null}",
    "{\"n\":[1],\"n\":{\"int\":3}}",
    "{\"id\":\"\xc3\"}",
    "{\"id\":\"\xed\xa0\x80\"}",
    "{\"id\":\"\xc0\xaf\"}"};

/* Every table's rows (but the wall-clock changed_ms): types and bytes. */
static void dump(sqlite3 *db, struct buf *out)
{
    sqlite3_stmt *tables = NULL, *rows = NULL;
    sqlite3_prepare_v2(db,
                       "SELECT name FROM sqlite_schema WHERE type = 'table' UNION ALL "
                       "SELECT 'temp.' || name FROM sqlite_temp_schema WHERE type = 'table' "
                       "ORDER BY 1",
                       -1, &tables, NULL);
    while (sqlite3_step(tables) == SQLITE_ROW) {
        char sql[256];
        const char *name = (const char *)sqlite3_column_text(tables, 0);
        snprintf(sql, sizeof(sql), "SELECT * FROM %s", name);
        buf_printf(out, "table %s\n", name);
        if (sqlite3_prepare_v2(db, sql, -1, &rows, NULL) != SQLITE_OK) {
            buf_printf(out, "error %s\n", sqlite3_errmsg(db));
            continue;
        }
        while (sqlite3_step(rows) == SQLITE_ROW) {
            for (int c = 0; c < sqlite3_column_count(rows); c++) {
                int type = sqlite3_column_type(rows, c);
                if (strcmp(sqlite3_column_name(rows, c), "changed_ms") == 0)
                    continue;
                buf_printf(out, " %d:", type);
                if (type == SQLITE_INTEGER) {
                    buf_printf(out, "%lld", (long long)sqlite3_column_int64(rows, c));
                } else if (type == SQLITE_FLOAT) {
                    buf_printf(out, "%.17g", sqlite3_column_double(rows, c));
                } else if (type != SQLITE_NULL) {
                    const unsigned char *p = sqlite3_column_blob(rows, c);
                    int n = sqlite3_column_bytes(rows, c);
                    for (int i = 0; i < n; i++)
                        buf_printf(out, "%02x", p[i]);
                }
            }
            buf_put(out, "\n", 1);
        }
        sqlite3_finalize(rows);
        rows = NULL;
    }
    sqlite3_finalize(tables);
}

/* Runs `events` through pipeline `name` twice, with and without the fast
 * reader, and compares everything. Returns the events the fast reader decoded,
 * or -1 on a difference. */
static int64_t compare(const char *name, const struct events *events)
{
    const char *dir = tly_test_dir();
    tly_store *stores[2] = {NULL, NULL};
    tly_pipeline *p[2] = {NULL, NULL};
    tly_event *list = calloc(events->count, sizeof(*list));
    tly_event_result *results[2] = {calloc(events->count, sizeof(tly_event_result)),
                                    calloc(events->count, sizeof(tly_event_result))};
    struct buf dumps[2] = {{0}, {0}};
    char err[256];
    int64_t fast = -1;

    CHECK(list && results[0] && results[1]);
    for (size_t i = 0; i < events->count; i++) {
        list[i].data = events->text[i];
        list[i].len = events->len[i];
        list[i].partition = (int)(i % 3);
    }
    for (int k = 0; k < 2; k++) {
        char path[300];
        snprintf(path, sizeof(path), "%s/%s.db", dir, k ? "jsonc" : "fast");
        CHECK_MSG(tly_store_open(path, NULL, &stores[k], err, sizeof(err)) == 0, "%s", err);
        CHECK_MSG(tly_pipeline_open(stores[k], name, NULL, 0, &p[k], err, sizeof(err)) == 0, "%s",
                  err);
        tly_pipeline_set_fast_json(p[k], k == 0);
        /* batches of 64 (a failing statement redoes one event at a time) */
        for (size_t at = 0; at < events->count; at += 64) {
            size_t n = events->count - at < 64 ? events->count - at : 64;
            CHECK_MSG(tly_pipeline_apply(p[k], list + at, n, results[k] + at, NULL, err,
                                         sizeof(err)) == 0,
                      "%s", err);
        }
        dump(tly_store_db(stores[k]), &dumps[k]);
    }
    for (size_t i = 0; i < events->count; i++) {
        CHECK_MSG(results[0][i].status == results[1][i].status &&
                      strcmp(results[0][i].reason, results[1][i].reason) == 0,
                  "%s event %zu <%s>: fast %d \"%s\", json-c %d \"%s\"", name, i, events->text[i],
                  results[0][i].status, results[0][i].reason, results[1][i].status,
                  results[1][i].reason);
    }
    CHECK_MSG(dumps[0].len == dumps[1].len &&
                  memcmp(dumps[0].data, dumps[1].data, dumps[0].len) == 0,
              "%s: the databases differ", name);
    CHECK_INT(tly_pipeline_fast_json_events(p[1]), 0);
    fast = tly_pipeline_fast_json_events(p[0]);
    printf("%s: %zu events, %lld by the fast reader\n", name, events->count, (long long)fast);
end:
    if (fast < 0 && dumps[0].data && dumps[1].data) {
        /* the first differing line, for the log */
        size_t at = 0, line = 0;
        while (at < dumps[0].len && at < dumps[1].len && dumps[0].data[at] == dumps[1].data[at])
            if (dumps[0].data[at++] == '\n')
                line = at;
        fprintf(stderr, "fast:   %.300s\njson-c: %.300s\n", dumps[0].data + line,
                dumps[1].data + line);
    }
    for (int k = 0; k < 2; k++) {
        tly_pipeline_close(p[k]);
        tly_store_close(stores[k]);
        free(results[k]);
        free(dumps[k].data);
    }
    free(list);
    return fast;
}

static const char capture_head[] =
    "-- @pipeline %s\n"
    "-- @entity %s\n"
    "-- @field f_id    id|alt.id    id        %s\n"
    "-- @field f_text  text         text      %s\n"
    "-- @field f_int   n.int        int       %s\n"
    "-- @field f_dec   dec|alt.dec  decimal6  %s\n"
    "-- @field f_tms   tms          time_ms   %s\n"
    "-- @field f_tany  tany|a.b.c   time_any  %s\n"
    "-- @field f_bool  flag         bool      %s\n"
    "-- @field f_json  j            json      %s\n"
    "%s"
    "-- @setup\n"
    "CREATE TABLE IF NOT EXISTS capture (n INTEGER PRIMARY KEY, part, event, f_id, f_text,\n"
    "    f_int, f_dec, f_tms, f_tany, f_bool, f_json, k, v);\n"
    "-- @stage\n"
    "INSERT INTO capture (part, event, f_id, f_text, f_int, f_dec, f_tms, f_tany, f_bool,\n"
    "    f_json, k, v) VALUES (:partition, :event, :f_id, :f_text, :f_int, :f_dec, :f_tms,\n"
    "    :f_tany, :f_bool, :f_json, %s);\n"
    "-- @merge\n"
    "DELETE FROM capture WHERE n < 0;\n";

/* Writes a capture pipeline: every field in `mode`, with @each over data or
 * not. Returns its path (static). */
static const char *capture_pipeline(const char *name, const char *mode, const char *id_mode,
                                    bool each)
{
    static char path[4][300];
    static int next;
    char *out = path[next++ % 4];
    FILE *f;
    snprintf(out, sizeof(path[0]), "%s/%s.sql", tly_test_dir(), name);
    f = fopen(out, "w");
    if (!f)
        return NULL;
    fprintf(f, capture_head, name, name, id_mode, mode, mode, mode, mode, mode, mode, mode,
            each ? "-- @each key value data except skip,id\n" : "",
            each ? ":key, :value" : "NULL, NULL");
    fclose(f);
    return out;
}

static void random_events(struct events *e, size_t count)
{
    struct buf b = {0};
    for (size_t i = 0; i < sizeof(edge_cases) / sizeof(*edge_cases); i++)
        add_event(e, edge_cases[i], strlen(edge_cases[i]));
    for (size_t i = 0; i < count; i++) {
        random_event(&b, capture_keys, sizeof(capture_keys) / sizeof(*capture_keys), i % 2);
        add_with_mangles(e, &b);
    }
    free(b.data);
}

static void test_capture_optional(void)
{
    struct events e = {0};
    const char *path = capture_pipeline("cap_optional", "optional", "optional", false);
    int64_t fast;
    CHECK(path);
    random_events(&e, 6000);
    fast = compare(path, &e);
    CHECK(fast >= 0);
    /* both readers were exercised */
    CHECK_MSG(fast > (int64_t)e.count / 10 && fast < (int64_t)e.count * 9 / 10, "fast %lld of %zu",
              (long long)fast, e.count);
end:
    free_events(&e);
}

static void test_capture_required(void)
{
    struct events e = {0};
    const char *path = capture_pipeline("cap_required", "required", "skip_empty", false);
    CHECK(path);
    random_events(&e, 6000);
    CHECK(compare(path, &e) >= 0);
end:
    free_events(&e);
}

static void test_capture_each(void)
{
    struct events e = {0};
    const char *path = capture_pipeline("cap_each", "optional", "optional", true);
    int64_t fast;
    CHECK(path);
    random_events(&e, 6000);
    fast = compare(path, &e);
    CHECK(fast > 0);
end:
    free_events(&e);
}

/* The built-in pipelines' shapes, from the load generator (all for the fast
 * reader) and spelled other ways. */
static void test_orders(void)
{
    static const char *const prices[] = {"83.71", "\"83.71\"", "1",     "1.5",  "1.50",
                                         "1e2",   "0.0000001", "\"x\"", "null", "-5"};
    static const char *const qtys[] = {"1", "2", "0", "-1", "1.0", "\"2\"", "9223372036854775807"};
    static const char *const times[] = {"1700000000000", "1700000001234", "\"1700000000000\"", "-1",
                                        "1.7e12",        "null"};
    struct events e = {0};
    struct buf b = {0};
    tly_loadgen_options opts;
    tly_loadgen *gen;
    char line[4096];
    int64_t fast;

    tly_loadgen_options_init(&opts, "orders");
    opts.stores = 5;
    opts.products = 5;
    opts.time_spread_ms = 600000;
    CHECK((gen = tly_loadgen_new(&opts)) != NULL);
    for (int i = 0; i < 3000; i++) {
        int n = tly_loadgen_next(gen, 1700000000000LL, line, sizeof(line));
        add_event(&e, line, (size_t)n);
    }
    tly_loadgen_free(gen);
    fast = compare("orders", &e);
    CHECK_INT(fast, e.count);
    free_events(&e);
    for (int i = 0; i < 4000; i++) {
        b.len = 0;
        buf_printf(&b, "{\"orderId\":%s,\"storeId\":\"s%u\",", rnd(5) ? "\"o-1\"" : "17", rnd(3));
        put_space(&b, false);
        buf_printf(&b, "\"productId\":\"p\\u00e9%u\",\"price\":%s,\"qty\":%s", rnd(3),
                   rnd(4) ? prices[rnd(2)] : prices[rnd(10)], rnd(4) ? "1" : qtys[rnd(7)]);
        if (rnd(2))
            buf_printf(&b, ",\"ts\":%s", rnd(4) ? times[rnd(2)] : times[rnd(6)]);
        if (rnd(2))
            buf_printf(&b, ",\"normTs\":%s", rnd(4) ? times[rnd(2)] : times[rnd(6)]);
        if (rnd(2))
            buf_printf(&b, ",\"validated\":%s", rnd(4) ? "true" : any_value());
        buf_put(&b, "}", 1);
        put_space(&b, false);
        add_with_mangles(&e, &b);
    }
    CHECK(compare("orders", &e) > 0);
end:
    free(b.data);
    free_events(&e);
}

static void test_telemetry(void)
{
    struct events e = {0};
    struct buf b = {0};
    tly_loadgen_options opts;
    tly_loadgen *gen;
    char line[4096];

    tly_loadgen_options_init(&opts, "telemetry");
    opts.vins = 50;
    opts.sensors = 30;
    opts.sensors_per_event = 30;
    CHECK((gen = tly_loadgen_new(&opts)) != NULL);
    for (int i = 0; i < 1500; i++) {
        int n = tly_loadgen_next(gen, 1700000000000LL + i, line, sizeof(line));
        add_event(&e, line, (size_t)n);
    }
    tly_loadgen_free(gen);
    CHECK_INT(compare("telemetry", &e), e.count);
    free_events(&e);
    for (int i = 0; i < 3000; i++) {
        int sensors = (int)rnd(40);
        b.len = 0;
        buf_printf(&b, "{\"data\":{\"id\":%s", rnd(6) ? "\"VIN1\"" : any_value());
        for (int s = 0; s < sensors; s++) {
            buf_put(&b, ",", 1);
            put_space(&b, false);
            buf_printf(&b, "\"s%d\":%s", rnd(3) == 0 ? (int)rnd(45) : s, any_value());
        }
        buf_printf(&b, "},\"received_at\":%s", rnd(5) ? "1700000000000" : any_value());
        if (rnd(2))
            buf_printf(&b, ",\"produced_at\":%s", rnd(5) ? "1699999999000" : any_value());
        buf_put(&b, "}", 1);
        add_with_mangles(&e, &b);
    }
    CHECK(compare("telemetry", &e) > 0);
end:
    free(b.data);
    free_events(&e);
}

static void test_pageviews(void)
{
    struct events e = {0};
    struct buf b = {0};
    char path[512];
    const char *src = getenv("TALLY_SOURCE_DIR");

    snprintf(path, sizeof(path), "%s/examples/pipelines/pageviews.sql", src ? src : ".");
    for (int i = 0; i < 4000; i++) {
        b.len = 0;
        buf_printf(&b, "{\"page\":\"/p%u\",\"user\":%s,\"ts\":%s}", rnd(20),
                   rnd(3)   ? "\"u1\""
                   : rnd(2) ? "42"
                            : any_value(),
                   rnd(5) ? "1700000000000" : any_value());
        add_with_mangles(&e, &b);
    }
    CHECK(compare(path, &e) > 0);
end:
    free(b.data);
    free_events(&e);
}

/* The reader alone: never reads outside its input, whatever is cut off. */
static void test_reader_bounds(void)
{
    tly_jsonscan *s = tly_jsonscan_new();
    struct buf b = {0};
    CHECK(s);
    for (int i = 0; i < 3000; i++) {
        random_event(&b, capture_keys, sizeof(capture_keys) / sizeof(*capture_keys), i % 2);
        for (size_t cut = 0; cut <= b.len; cut += 1 + rnd(7)) {
            /* an exact-size copy, so that ASan sees any read past the end */
            char *copy = malloc(cut ? cut : 1);
            CHECK(copy);
            memcpy(copy, b.data, cut);
            if (tly_jsonscan_read(s, copy, cut) == 0) {
                for (int n = 0; n < 64; n++) {
                    size_t len;
                    const char *text = tly_jsonscan_text(s, n % 8, &len);
                    CHECK(!text || strlen(text) == len);
                    if (n % 8 == 7)
                        break;
                }
            }
            free(copy);
        }
    }
    CHECK(tly_jsonscan_read(s, "{\"a\":\"\\u00e9\\/x\",\"b\":-12.5e1}", 29) == 0);
    {
        size_t len;
        int a = tly_jsonscan_member(s, 0, "a"), c = tly_jsonscan_member(s, 0, "b");
        CHECK(a > 0 && c > 0);
        CHECK_STR(tly_jsonscan_text(s, a, &len), "\xc3\xa9/x");
        CHECK_INT(len, 4);
        CHECK_STR(tly_jsonscan_text(s, c, &len), "-12.5e1");
        CHECK(!(tly_jsonscan_node(s, a)->flags & TLY_JNODE_CANONICAL));
        CHECK(tly_jsonscan_node(s, c)->flags & TLY_JNODE_CANONICAL);
    }
end:
    free(b.data);
    tly_jsonscan_free(s);
}

static const tly_testcase cases[] = {{"capture_optional", test_capture_optional},
                                     {"capture_required", test_capture_required},
                                     {"capture_each", test_capture_each},
                                     {"orders", test_orders},
                                     {"telemetry", test_telemetry},
                                     {"pageviews", test_pageviews},
                                     {"reader_bounds", test_reader_bounds},
                                     {NULL, NULL}};

int main(int argc, char **argv)
{
    return tly_test_main(argc, argv, cases);
}
