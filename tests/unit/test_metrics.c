/* tests/unit/test_metrics.c - GET /metrics as a Prometheus scraper reads it.
 *
 * Every render is first checked against the text exposition format 0.0.4 by
 * check_exposition below (names, labels, one HELP and one TYPE per family
 * before its samples, a family's samples together, histograms cumulative with
 * +Inf equal to _count); the cases then look up the values the figures set
 * should have produced. Metric names are the ones the README documents and
 * the live page (adapters/http/page.html) reads. */
#include "tly_test.h"

#include "metrics.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>

/* ---- the exposition format ---------------------------------------------- */

#define MAX_FAMILIES 64

struct family {
    char name[128];
    char type[16];
    bool help, typed;
    int samples;
};

struct exposition {
    struct family families[MAX_FAMILIES];
    int count;
    struct family *current; /* the family whose samples may follow */
    /* the histogram being read: its last bucket bound and cumulative count */
    double last_le, last_bucket;
    bool saw_inf;
    char *err;
    size_t errlen;
};

__attribute__((format(printf, 3, 4))) static int fail(struct exposition *x, const char *line,
                                                      const char *fmt, ...)
{
    va_list ap;
    int n;
    va_start(ap, fmt);
    n = vsnprintf(x->err, x->errlen, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < x->errlen)
        snprintf(x->err + n, x->errlen - (size_t)n, " in line \"%s\"", line);
    return -1;
}

static bool name_char(char c, bool first)
{
    return isalpha((unsigned char)c) || c == '_' || c == ':' ||
           (!first && isdigit((unsigned char)c));
}

/* Length of the metric name at the start of s (0 if none). */
static size_t name_length(const char *s)
{
    size_t n = 0;
    while (s[n] && name_char(s[n], n == 0))
        n++;
    return n;
}

static struct family *find_family(struct exposition *x, const char *name, size_t len)
{
    for (int i = 0; i < x->count; i++)
        if (strlen(x->families[i].name) == len && strncmp(x->families[i].name, name, len) == 0)
            return &x->families[i];
    return NULL;
}

static struct family *add_family(struct exposition *x, const char *name, size_t len)
{
    struct family *f = find_family(x, name, len);
    if (f || x->count == MAX_FAMILIES || len >= sizeof(f->name))
        return f;
    f = &x->families[x->count++];
    memset(f, 0, sizeof(*f));
    memcpy(f->name, name, len);
    return f;
}

/* "# HELP name text" or "# TYPE name type". */
static int comment_line(struct exposition *x, const char *line)
{
    bool help = strncmp(line, "# HELP ", 7) == 0, type = strncmp(line, "# TYPE ", 7) == 0;
    const char *name = line + 7, *rest;
    size_t len = name_length(name);
    struct family *f;

    if (!help && !type)
        return 0; /* a plain comment */
    if (len == 0 || name[len] != ' ')
        return fail(x, line, "bad metric name");
    rest = name + len + 1;
    if (!(f = add_family(x, name, len)))
        return fail(x, line, "too many families");
    if (f->samples > 0)
        return fail(x, line, "HELP or TYPE after the family's samples");
    if (help) {
        if (f->help)
            return fail(x, line, "a second HELP for %s", f->name);
        for (const char *c = rest; *c; c++)
            if (*c == '\\' && c[1] != '\\' && c[1] != 'n')
                return fail(x, line, "a backslash not escaped in HELP");
        if (!*rest)
            return fail(x, line, "empty HELP");
        f->help = true;
    } else {
        if (f->typed)
            return fail(x, line, "a second TYPE for %s", f->name);
        if (strcmp(rest, "counter") && strcmp(rest, "gauge") && strcmp(rest, "histogram") &&
            strcmp(rest, "summary") && strcmp(rest, "untyped"))
            return fail(x, line, "unknown type");
        snprintf(f->type, sizeof(f->type), "%s", rest);
        f->typed = true;
    }
    x->current = f;
    x->last_le = -INFINITY;
    x->last_bucket = 0;
    x->saw_inf = false;
    return 0;
}

/* {name="value",...}: names valid and distinct, values properly escaped;
 * the value of le (if any) into le, and whether pipeline=expected was there. */
static int labels(struct exposition *x, const char *line, const char **at, const char *pipeline,
                  char *le, size_t lelen)
{
    const char *s = *at + 1;
    char names[8][64];
    int count = 0;
    bool has_pipeline = false;

    le[0] = '\0';
    while (*s != '}') {
        size_t len = name_length(s), vlen = 0;
        char value[256];
        if (len == 0 || len >= sizeof(names[0]) || s[len] != '=' || s[len + 1] != '"')
            return fail(x, line, "bad label name");
        if (count == 8)
            return fail(x, line, "too many labels");
        memcpy(names[count], s, len);
        names[count][len] = '\0';
        for (int i = 0; i < count; i++)
            if (strcmp(names[i], names[count]) == 0)
                return fail(x, line, "label %s twice", names[i]);
        s += len + 2;
        while (*s != '"') {
            if (!*s || *s == '\n')
                return fail(x, line, "unterminated label value");
            if (*s == '\\') {
                if (s[1] != '\\' && s[1] != '"' && s[1] != 'n')
                    return fail(x, line, "bad escape in a label value");
                s++;
            }
            if (vlen + 1 < sizeof(value))
                value[vlen++] = *s;
            s++;
        }
        value[vlen] = '\0';
        if (strcmp(names[count], "pipeline") == 0)
            has_pipeline = strcmp(value, pipeline) == 0;
        if (strcmp(names[count], "le") == 0 && (size_t)snprintf(le, lelen, "%s", value) >= lelen)
            return fail(x, line, "an le value too long");
        count++;
        s++;
        if (*s == ',')
            s++;
        else if (*s != '}')
            return fail(x, line, "expected , or } after a label");
    }
    if (!has_pipeline)
        return fail(x, line, "no pipeline=\"%s\" label", pipeline);
    *at = s + 1;
    return 0;
}

static int parse_value(const char *s, double *v)
{
    char *end;
    if (strcmp(s, "+Inf") == 0 || strcmp(s, "-Inf") == 0 || strcmp(s, "NaN") == 0) {
        *v = strcmp(s, "NaN") == 0 ? NAN : s[0] == '+' ? INFINITY : -INFINITY;
        return 0;
    }
    *v = strtod(s, &end);
    return *s && !*end && !isspace((unsigned char)*s) ? 0 : -1;
}

static bool ends_with(const char *s, size_t len, const char *suffix)
{
    size_t n = strlen(suffix);
    return len >= n && strncmp(s + len - n, suffix, n) == 0;
}

static int sample_line(struct exposition *x, const char *line, const char *pipeline)
{
    size_t len = name_length(line);
    struct family *f = x->current;
    const char *rest = line + len;
    char le[64];
    double v, le_value;
    bool bucket = false;

    if (len == 0)
        return fail(x, line, "bad metric name");
    if (!f || !f->typed || !f->help)
        return fail(x, line, "a sample before its family's HELP and TYPE");
    if (strcmp(f->type, "histogram") == 0) {
        size_t base = strlen(f->name);
        bucket = len == base + 7 && ends_with(line, len, "_bucket");
        if (strncmp(line, f->name, base) != 0 ||
            !(bucket || (len == base + 4 && ends_with(line, len, "_sum")) ||
              (len == base + 6 && ends_with(line, len, "_count"))))
            return fail(x, line, "not a sample of histogram %s", f->name);
    } else if (strlen(f->name) != len || strncmp(line, f->name, len) != 0) {
        return fail(x, line, "a sample outside its family (%s's samples came last)", f->name);
    }
    if (*rest != '{')
        return fail(x, line, "no labels");
    if (labels(x, line, &rest, pipeline, le, sizeof(le)) < 0)
        return -1;
    if (*rest != ' ' || parse_value(rest + 1, &v) < 0)
        return fail(x, line, "bad value");
    if (strcmp(f->type, "counter") == 0 && v < 0)
        return fail(x, line, "a negative counter");
    f->samples++;
    if (!bucket) {
        if (le[0])
            return fail(x, line, "le on a sample that is no bucket");
        if (strcmp(f->type, "histogram") == 0 && ends_with(line, len, "_count") &&
            (!x->saw_inf || v != x->last_bucket))
            return fail(x, line, "_count differs from the +Inf bucket (%g)", x->last_bucket);
        return 0;
    }
    if (!le[0] || parse_value(le, &le_value) < 0)
        return fail(x, line, "a bucket without a numeric le");
    if (x->saw_inf || le_value <= x->last_le)
        return fail(x, line, "bucket bounds not increasing");
    if (v < x->last_bucket)
        return fail(x, line, "buckets not cumulative");
    x->last_le = le_value;
    x->last_bucket = v;
    x->saw_inf = isinf(le_value) && le_value > 0;
    return 0;
}

/* Checks text against the exposition format; returns 0, or -1 with a message
 * in err that quotes the line at fault. */
static int check_exposition(const char *text, const char *pipeline, char *err, size_t errlen)
{
    struct exposition x;
    const char *line = text;
    char buf[1024];

    memset(&x, 0, sizeof(x));
    x.err = err;
    x.errlen = errlen;
    if (!*text || text[strlen(text) - 1] != '\n')
        return fail(&x, "", "the text does not end with a newline");
    while (*line) {
        const char *nl = strchr(line, '\n');
        size_t len = (size_t)(nl - line);
        int rc;
        if (len >= sizeof(buf))
            return fail(&x, "", "a line of %zu bytes", len);
        memcpy(buf, line, len);
        buf[len] = '\0';
        if (len == 0)
            rc = 0;
        else if (buf[0] == '#')
            rc = comment_line(&x, buf);
        else
            rc = sample_line(&x, buf, pipeline);
        if (rc < 0)
            return -1;
        line = nl + 1;
    }
    for (int i = 0; i < x.count; i++) {
        struct family *f = &x.families[i];
        if (!f->help || !f->typed || f->samples == 0)
            return fail(&x, f->name, "a family needs HELP, TYPE and a sample");
        if (strcmp(f->type, "counter") == 0 && !ends_with(f->name, strlen(f->name), "_total"))
            return fail(&x, f->name, "a counter not named *_total");
        if (strcmp(f->type, "histogram") == 0 && f->samples < 3)
            return fail(&x, f->name, "a histogram without buckets, _sum and _count");
    }
    return 0;
}

/* ---- looking values up -------------------------------------------------- */

/* The value of the sample whose name and labels are exactly `series`; false if
 * there is none. */
static bool sample(const char *text, const char *series, double *value)
{
    size_t len = strlen(series);
    for (const char *line = text; *line;) {
        const char *nl = strchr(line, '\n');
        if (!nl)
            return false;
        if (strncmp(line, series, len) == 0 && line[len] == ' ') {
            char buf[64];
            size_t n = (size_t)(nl - line) - len - 1;
            if (n >= sizeof(buf))
                return false;
            memcpy(buf, line + len + 1, n);
            buf[n] = '\0';
            return parse_value(buf, value) == 0;
        }
        line = nl + 1;
    }
    return false;
}

/* How many lines of text start with prefix. */
static int lines_starting(const char *text, const char *prefix)
{
    int n = 0;
    size_t len = strlen(prefix);
    for (const char *line = text; *line;) {
        const char *nl = strchr(line, '\n');
        if (strncmp(line, prefix, len) == 0)
            n++;
        if (!nl)
            break;
        line = nl + 1;
    }
    return n;
}

/* Renders m and checks the format; NULL (and a failed check) if either fails. */
static char *render(tly_metrics *m, const char *db_path)
{
    char err[1024];
    char *text = tly_metrics_render(m, db_path);
    tly_test_checks++;
    if (!text) {
        fprintf(stderr, "tly_metrics_render returned NULL\n");
        tly_test_failures++;
        return NULL;
    }
    if (check_exposition(text, "orders", err, sizeof(err)) < 0) {
        fprintf(stderr, "not the Prometheus text format: %s\n--- the text:\n%s---\n", err, text);
        tly_test_failures++;
        free(text);
        return NULL;
    }
    return text;
}

#define CHECK_SAMPLE(text, series, want)                                                           \
    do {                                                                                           \
        double got_;                                                                               \
        CHECK_MSG(sample((text), (series), &got_), "no sample %s", (series));                      \
        CHECK_MSG(fabs(got_ - (double)(want)) < 1e-9, "%s = %.9g, not %.9g", (series), got_,       \
                  (double)(want));                                                                 \
    } while (0)

/* ---- the cases ---------------------------------------------------------- */

/* A daemon that has just started: every fixed family with its zero value; no
 * per-partition family (no # TYPE line without a sample) and no file sizes
 * without a database path. */
static void test_fresh(void)
{
    tly_metrics *m = tly_metrics_new("orders");
    char *text = NULL;

    CHECK(m != NULL);
    CHECK((text = render(m, NULL)) != NULL);
    CHECK_SAMPLE(text, "tally_events_applied_total{pipeline=\"orders\"}", 0);
    CHECK_SAMPLE(text, "tally_ready{pipeline=\"orders\"}", 0);
    CHECK_SAMPLE(text, "tally_end_to_end_latency_seconds_count{pipeline=\"orders\"}", 0);
    CHECK(strstr(text, "tally_consumer_lag_records") == NULL);
    CHECK(strstr(text, "tally_partition_recovery") == NULL);
    CHECK(strstr(text, "tally_database_bytes") == NULL);
    CHECK(strstr(text, "tally_wal_bytes") == NULL);
end:
    free(text);
    tly_metrics_free(m);
}

/* Each counter under its documented name, typed counter, with what was added
 * to it (a distinct amount each, so two swapped names would show). */
static void test_counters(void)
{
    static const struct {
        tly_counter counter;
        const char *name;
    } want[] = {
        {TLY_C_CONSUMED, "tally_events_consumed_total"},
        {TLY_C_APPLIED, "tally_events_applied_total"},
        {TLY_C_REJECTED, "tally_events_rejected_total"},
        {TLY_C_LATE, "tally_events_late_total"},
        {TLY_C_DEAD_LETTERED, "tally_events_dead_lettered_total"},
        {TLY_C_SKIPPED, "tally_events_skipped_total"},
        {TLY_C_CHANGES, "tally_changelog_records_total"},
        {TLY_C_OUTPUTS, "tally_outputs_total"},
        {TLY_C_BATCHES, "tally_batches_total"},
        {TLY_C_TXN_COMMITTED, "tally_transactions_committed_total"},
        {TLY_C_TXN_ABORTED, "tally_transactions_aborted_total"},
        {TLY_C_SNAPSHOTS, "tally_snapshots_total"},
        {TLY_C_SNAPSHOT_ERRORS, "tally_snapshot_errors_total"},
        {TLY_C_REBALANCES, "tally_rebalances_total"},
        {TLY_C_PARTITIONS_ASSIGNED, "tally_partitions_assigned_total"},
        {TLY_C_PARTITIONS_REVOKED, "tally_partitions_revoked_total"},
    };
    tly_metrics *m = tly_metrics_new("orders");
    char *text = NULL, series[160], type[160];

    CHECK(m != NULL);
    CHECK_INT(sizeof(want) / sizeof(want[0]), TLY_C_COUNT);
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        tly_metrics_add(m, want[i].counter, 10 * (int64_t)(i + 1));
        tly_metrics_add(m, want[i].counter, 1); /* counters accumulate */
    }
    tly_metrics_add(m, TLY_C_APPLIED, 5000000000LL); /* past 32 bits */
    CHECK((text = render(m, NULL)) != NULL);
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        snprintf(series, sizeof(series), "%s{pipeline=\"orders\"}", want[i].name);
        snprintf(type, sizeof(type), "# TYPE %s counter\n", want[i].name);
        CHECK_MSG(strstr(text, type) != NULL, "no \"%s\"", type);
        CHECK_SAMPLE(text, series,
                     10 * (int64_t)(i + 1) + 1 +
                         (want[i].counter == TLY_C_APPLIED ? 5000000000LL : 0));
    }
end:
    free(text);
    tly_metrics_free(m);
}

/* Gauges hold the last value set; the ones kept in milliseconds are rendered
 * in seconds, as their _seconds names say. */
static void test_gauges(void)
{
    static const struct {
        tly_gauge gauge;
        const char *name;
        int64_t set;
        double rendered;
    } want[] = {
        {TLY_G_READY, "tally_ready", 1, 1},
        {TLY_G_SNAPSHOT_WRITE_MS, "tally_snapshot_duration_seconds", 1500, 1.5},
        {TLY_G_SNAPSHOT_BYTES, "tally_snapshot_bytes", 123456789012LL, 123456789012.0},
        {TLY_G_SNAPSHOT_LAST_SEQ, "tally_snapshot_last_seq", 41, 41},
        {TLY_G_RECOVERY_MS, "tally_recovery_duration_seconds", 250, 0.25},
        {TLY_G_RECOVERY_RECORDS, "tally_recovery_records_replayed", 7, 7},
        {TLY_G_RECOVERY_BYTES, "tally_recovery_bytes_replayed", 4096, 4096},
        {TLY_G_CHANGELOG_ROWS, "tally_changelog_rows", 300, 300},
        {TLY_G_LAST_SEQ, "tally_changelog_last_seq", 42, 42},
        {TLY_G_PARTITIONS_HELD, "tally_partitions_held", 3, 3},
        {TLY_G_REBALANCE_MS, "tally_rebalance_duration_seconds", 2, 0.002},
        {TLY_G_ROWS_MOVED, "tally_state_rows_moved", 5, 5},
        {TLY_G_BROKER_CONTACT_MS, "tally_broker_last_contact_timestamp_seconds", 1796490000000LL,
         1796490000.0},
    };
    tly_metrics *m = tly_metrics_new("orders");
    char *text = NULL, series[160], type[160];

    CHECK(m != NULL);
    CHECK_INT(sizeof(want) / sizeof(want[0]), TLY_G_COUNT);
    tly_metrics_set(m, TLY_G_READY, 0);
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        tly_metrics_set(m, want[i].gauge, 999);
        tly_metrics_set(m, want[i].gauge, want[i].set); /* the last value wins */
        CHECK_INT(tly_metrics_get(m, want[i].gauge), want[i].set);
    }
    CHECK((text = render(m, NULL)) != NULL);
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        snprintf(series, sizeof(series), "%s{pipeline=\"orders\"}", want[i].name);
        snprintf(type, sizeof(type), "# TYPE %s gauge\n", want[i].name);
        CHECK_MSG(strstr(text, type) != NULL, "no \"%s\"", type);
        CHECK_SAMPLE(text, series, want[i].rendered);
    }
end:
    free(text);
    tly_metrics_free(m);
}

/* Observations land in the first bucket whose bound (le, "less or equal")
 * holds them; buckets are cumulative, +Inf and _count hold them all, _sum is
 * their total in seconds. Only the histogram observed changes. */
static void test_histogram(void)
{
    tly_metrics *m = tly_metrics_new("orders");
    char *text = NULL;
    const char *e2e = "tally_end_to_end_latency_seconds";
    char series[160];
    static const struct {
        const char *le;
        int count;
    } buckets[] = {{"0.001", 3}, {"0.0025", 3}, {"0.005", 5}, {"0.01", 6},
                   {"0.025", 6}, {"5", 6},      {"10", 6},    {"+Inf", 7}};

    CHECK(m != NULL);
    tly_metrics_observe_ms(m, TLY_H_E2E, 0.5, 1);
    tly_metrics_observe_ms(m, TLY_H_E2E, 1, 1);     /* on the 1 ms bound: in it */
    tly_metrics_observe_ms(m, TLY_H_E2E, -5, 1);    /* a producer clock ahead: 0 */
    tly_metrics_observe_ms(m, TLY_H_E2E, 3, 2);     /* two at once */
    tly_metrics_observe_ms(m, TLY_H_E2E, 10, 1);    /* on the 10 ms bound */
    tly_metrics_observe_ms(m, TLY_H_E2E, 20000, 1); /* past the last bound */
    tly_metrics_observe_ms(m, TLY_H_E2E, 1, 0);     /* no observation */
    tly_metrics_observe_ms(m, TLY_H_E2E, 1, -2);
    tly_metrics_observe_ms(m, TLY_H_APPLY, 30, 1);
    CHECK((text = render(m, NULL)) != NULL);
    CHECK(strstr(text, "# TYPE tally_end_to_end_latency_seconds histogram\n") != NULL);
    for (size_t i = 0; i < sizeof(buckets) / sizeof(buckets[0]); i++) {
        snprintf(series, sizeof(series), "%s_bucket{pipeline=\"orders\",le=\"%s\"}", e2e,
                 buckets[i].le);
        CHECK_SAMPLE(text, series, buckets[i].count);
    }
    /* 14 bounds in all: the 13 from 1 ms to 10 s, and +Inf */
    CHECK_INT(lines_starting(text, "tally_end_to_end_latency_seconds_bucket{"), 14);
    snprintf(series, sizeof(series), "%s_count{pipeline=\"orders\"}", e2e);
    CHECK_SAMPLE(text, series, 7);
    snprintf(series, sizeof(series), "%s_sum{pipeline=\"orders\"}", e2e);
    CHECK_SAMPLE(text, series, 20.0175); /* 0.5 + 1 + 0 + 2 * 3 + 10 + 20000 ms */
    CHECK_SAMPLE(text, "tally_apply_duration_seconds_count{pipeline=\"orders\"}", 1);
    CHECK_SAMPLE(text, "tally_apply_duration_seconds_bucket{pipeline=\"orders\",le=\"0.025\"}", 0);
    CHECK_SAMPLE(text, "tally_apply_duration_seconds_bucket{pipeline=\"orders\",le=\"0.05\"}", 1);
    CHECK_SAMPLE(text, "tally_commit_duration_seconds_count{pipeline=\"orders\"}", 0);
    CHECK_SAMPLE(text, "tally_batch_duration_seconds_count{pipeline=\"orders\"}", 0);
end:
    free(text);
    tly_metrics_free(m);
}

/* Consumer lag: no family before the first partition's sample; one sample per
 * topic and partition, the latest value; gone again once cleared. */
static void test_lag(void)
{
    tly_metrics *m = tly_metrics_new("orders");
    char *text = NULL;

    CHECK(m != NULL);
    CHECK((text = render(m, NULL)) != NULL);
    CHECK(strstr(text, "tally_consumer_lag_records") == NULL);
    free(text);
    text = NULL;

    tly_metrics_set_lag(m, "orders.enriched", 0, 5);
    tly_metrics_set_lag(m, "orders.enriched", 1, 7);
    tly_metrics_set_lag(m, "other", 0, 9);
    tly_metrics_set_lag(m, "orders.enriched", 0, 3);
    CHECK((text = render(m, NULL)) != NULL);
    CHECK_INT(lines_starting(text, "# TYPE tally_consumer_lag_records gauge"), 1);
    CHECK_INT(lines_starting(text, "# HELP tally_consumer_lag_records "), 1);
    CHECK_INT(lines_starting(text, "tally_consumer_lag_records{"), 3);
    CHECK_SAMPLE(text,
                 "tally_consumer_lag_records{pipeline=\"orders\",topic=\"orders.enriched\","
                 "partition=\"0\"}",
                 3);
    CHECK_SAMPLE(text,
                 "tally_consumer_lag_records{pipeline=\"orders\",topic=\"orders.enriched\","
                 "partition=\"1\"}",
                 7);
    CHECK_SAMPLE(
        text, "tally_consumer_lag_records{pipeline=\"orders\",topic=\"other\",partition=\"0\"}", 9);
    free(text);
    text = NULL;

    tly_metrics_clear_lag(m);
    CHECK((text = render(m, NULL)) != NULL);
    CHECK(strstr(text, "tally_consumer_lag_records") == NULL);
end:
    free(text);
    tly_metrics_free(m);
}

/* Per-partition recovery: absent until a partition is taken over (one out of
 * range does not count), then seconds and records for each partition taken. */
static void test_partition_recovery(void)
{
    tly_metrics *m = tly_metrics_new("orders");
    char *text = NULL;

    CHECK(m != NULL);
    tly_metrics_set_partition_recovery(m, -1, 10, 10);
    tly_metrics_set_partition_recovery(m, 100000, 10, 10);
    CHECK((text = render(m, NULL)) != NULL);
    CHECK(strstr(text, "tally_partition_recovery") == NULL);
    free(text);
    text = NULL;

    tly_metrics_set_partition_recovery(m, 2, 1500, 40);
    tly_metrics_set_partition_recovery(m, 0, 20, 0);
    tly_metrics_set_partition_recovery(m, 2, 2500, 41); /* taken over again */
    CHECK((text = render(m, NULL)) != NULL);
    CHECK_INT(lines_starting(text, "# TYPE tally_partition_recovery_seconds gauge"), 1);
    CHECK_INT(lines_starting(text, "# TYPE tally_partition_recovery_records gauge"), 1);
    CHECK_INT(lines_starting(text, "tally_partition_recovery_seconds{"), 2);
#define SERIES(family, partition) family "{pipeline=\"orders\",partition=\"" partition "\"}"
    CHECK_SAMPLE(text, SERIES("tally_partition_recovery_seconds", "2"), 2.5);
    CHECK_SAMPLE(text, SERIES("tally_partition_recovery_seconds", "0"), 0.02);
    CHECK_SAMPLE(text, SERIES("tally_partition_recovery_records", "2"), 41);
    CHECK_SAMPLE(text, SERIES("tally_partition_recovery_records", "0"), 0);
#undef SERIES
end:
    free(text);
    tly_metrics_free(m);
}

static int write_bytes(const char *path, size_t n)
{
    FILE *f = fopen(path, "wb");
    int rc = 0;
    if (!f)
        return -1;
    for (size_t i = 0; i < n; i++)
        if (fputc('x', f) == EOF)
            rc = -1;
    return fclose(f) == 0 ? rc : -1;
}

/* With a database path: the sizes of the file and of its -wal (0 while there
 * is none). */
static void test_database_sizes(void)
{
    tly_metrics *m = tly_metrics_new("orders");
    char *text = NULL, dir[64], db[300], wal[310];

    snprintf(dir, sizeof(dir), "%s", tly_test_dir());
    snprintf(db, sizeof(db), "%s/orders.db", dir);
    snprintf(wal, sizeof(wal), "%s-wal", db);
    CHECK(m != NULL);
    CHECK(write_bytes(db, 1234) == 0);
    CHECK((text = render(m, db)) != NULL);
    CHECK_SAMPLE(text, "tally_database_bytes{pipeline=\"orders\"}", 1234);
    CHECK_SAMPLE(text, "tally_wal_bytes{pipeline=\"orders\"}", 0);
    CHECK(strstr(text, "# TYPE tally_database_bytes gauge\n") != NULL);
    CHECK(strstr(text, "# TYPE tally_wal_bytes gauge\n") != NULL);
    free(text);
    text = NULL;

    CHECK(write_bytes(wal, 10) == 0);
    CHECK((text = render(m, db)) != NULL);
    CHECK_SAMPLE(text, "tally_wal_bytes{pipeline=\"orders\"}", 10);
end:
    unlink(wal);
    unlink(db);
    rmdir(dir);
    free(text);
    tly_metrics_free(m);
}

/* The pipeline label carries the name given to tly_metrics_new. */
static void test_pipeline_label(void)
{
    tly_metrics *m = tly_metrics_new("telemetry");
    char *text = NULL, err[1024];

    CHECK(m != NULL);
    CHECK((text = tly_metrics_render(m, NULL)) != NULL);
    CHECK_MSG(check_exposition(text, "telemetry", err, sizeof(err)) == 0, "%s", err);
    CHECK(strstr(text, "pipeline=\"orders\"") == NULL);
end:
    free(text);
    tly_metrics_free(m);
}

/* The format check itself: it passes a well-formed text and catches each rule
 * broken, for the reason given (so that the cases above can fail). */
static void test_format_checker(void)
{
#define FAMILY_A "# HELP a_total A.\n# TYPE a_total counter\n"
#define FAMILY_B "# HELP b_total B.\n# TYPE b_total counter\n"
#define HIST "# HELP h H.\n# TYPE h histogram\n"
#define P "{pipeline=\"orders\""
    static const char good[] =
        FAMILY_A "a_total" P "} 3\n" HIST "h_bucket" P ",le=\"0.1\"} 1\nh_bucket" P
                 ",le=\"+Inf\"} 2\nh_sum" P "} 0.5\nh_count" P "} 2\n";
    static const struct {
        const char *text, *reason; /* reason: part of the message expected */
    } bad[] = {
        {FAMILY_A "a_total" P "} 3", "does not end with a newline"},
        {FAMILY_A "# TYPE a_total counter\na_total" P "} 3\n", "a second TYPE"},
        {FAMILY_A "# HELP a_total A.\na_total" P "} 3\n", "a second HELP"},
        {"# HELP a_total A.\na_total" P "} 3\n", "before its family's HELP and TYPE"},
        {FAMILY_A, "needs HELP, TYPE and a sample"},
        {FAMILY_A "b_total" P "} 3\n", "outside its family"},
        {FAMILY_A "a_total" P "} 3\n" FAMILY_B "b_total" P "} 3\na_total" P "} 4\n",
         "outside its family"},
        {FAMILY_A "a_total" P "} 3\n# TYPE a_total counter\n", "after the family's samples"},
        {"# HELP a A.\n# TYPE a counter\na" P "} 3\n", "not named *_total"},
        {FAMILY_A "a_total" P "} -3\n", "a negative counter"},
        {FAMILY_A "a_total{x=\"1\"} 3\n", "no pipeline="},
        {FAMILY_A "a_total{pipeline=\"other\"} 3\n", "no pipeline="},
        {FAMILY_A "a_total" P ",pipeline=\"orders\"} 3\n", "label pipeline twice"},
        {FAMILY_A "a_total" P "} 3x\n", "bad value"},
        {FAMILY_A "a_total" P ",x=\"\\q\"} 3\n", "bad escape"},
        {FAMILY_A "1a_total" P "} 3\n", "bad metric name"},
        {HIST "h_bucket" P ",le=\"0.1\"} 2\nh_bucket" P ",le=\"+Inf\"} 1\nh_sum" P "} 0\nh_count" P
              "} 1\n",
         "not cumulative"},
        {HIST "h_bucket" P ",le=\"0.5\"} 1\nh_bucket" P ",le=\"0.1\"} 1\nh_bucket" P
              ",le=\"+Inf\"} 1\nh_sum" P "} 0\nh_count" P "} 1\n",
         "not increasing"},
        {HIST "h_bucket" P ",le=\"0.1\"} 1\nh_sum" P "} 0\nh_count" P "} 1\n", "_count differs"},
        {HIST "h_bucket" P ",le=\"+Inf\"} 2\nh_sum" P "} 0\nh_count" P "} 3\n", "_count differs"},
    };
#undef FAMILY_A
#undef FAMILY_B
#undef HIST
#undef P
    char err[1024] = "";

    CHECK_MSG(check_exposition(good, "orders", err, sizeof(err)) == 0, "%s", err);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        CHECK_MSG(check_exposition(bad[i].text, "orders", err, sizeof(err)) < 0,
                  "passed, though %s", bad[i].reason);
        CHECK_MSG(strstr(err, bad[i].reason) != NULL, "\"%s\" instead of \"%s\"", err,
                  bad[i].reason);
    }
end:;
}

/* Without a metrics object (no HTTP server) the daemon's calls do nothing. */
static void test_null_metrics(void)
{
    tly_metrics_add(NULL, TLY_C_APPLIED, 1);
    tly_metrics_set(NULL, TLY_G_READY, 1);
    tly_metrics_observe_ms(NULL, TLY_H_E2E, 1, 1);
    tly_metrics_set_lag(NULL, "t", 0, 1);
    tly_metrics_clear_lag(NULL);
    tly_metrics_set_partition_recovery(NULL, 0, 1, 1);
    tly_metrics_free(NULL);
    CHECK_INT(tly_metrics_get(NULL, TLY_G_READY), 0);
end:;
}

static const tly_testcase cases[] = {{"fresh", test_fresh},
                                     {"counters", test_counters},
                                     {"gauges", test_gauges},
                                     {"histogram", test_histogram},
                                     {"lag", test_lag},
                                     {"partition_recovery", test_partition_recovery},
                                     {"database_sizes", test_database_sizes},
                                     {"pipeline_label", test_pipeline_label},
                                     {"null_metrics", test_null_metrics},
                                     {"format_checker", test_format_checker},
                                     {NULL, NULL}};

int main(int argc, char **argv)
{
    return tly_test_main(argc, argv, cases);
}
