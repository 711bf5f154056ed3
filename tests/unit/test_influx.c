/* tests/unit/test_influx.c - the InfluxDB ingest's parts that need no server:
 * InfluxQL statements and request targets, answer parsing, the latest value
 * per (VIN, sensor) and its records, resource maps, the retry schedule, the
 * checkpoint file, and of the ingest cycle (ingest.h) the range of the next
 * cycle, the fold of an answer into latest-per-VIN, and what its open
 * refuses before it talks to Kafka. */
#include "tly_test.h"

#include "checkpoint.h"
#include "influx.h"
#include "influxql.h"
#include "ingest.h"
#include "latest.h"
#include "resource_map.h"

#include <errno.h>
#include <inttypes.h>
#include <sys/stat.h>

static const tly_influx_model model = {"telemetry", "pod", "vin"};

/* ------------------------------------------------------------- statements --- */

static void test_build_select(void)
{
    char buf[1024], err[256];
    tly_influx_model odd = {"tele\"metry\\x", "the pod", "v'in"};

    CHECK_INT(tly_influx_build_select(&model, "pod-a", 1700000000000, 1700000002000, buf,
                                      sizeof(buf), err, sizeof(err)),
              0);
    CHECK_STR(buf, "SELECT *::field FROM \"telemetry\" WHERE \"pod\" = 'pod-a' AND time >= "
                   "1700000000000ms AND time < 1700000002000ms GROUP BY \"vin\"");

    /* Quotes and backslashes in names and in the pod cannot end a token. */
    CHECK_INT(tly_influx_build_select(&odd, "a' OR ''='", 0, 5, buf, sizeof(buf), err, sizeof(err)),
              0);
    CHECK_STR(buf, "SELECT *::field FROM \"tele\\\"metry\\\\x\" WHERE \"the pod\" = 'a\\' OR "
                   "\\'\\'=\\'' AND time >= 0ms AND time < 5ms GROUP BY \"v'in\"");
    CHECK_INT(tly_influx_build_select(&model, "a\nb", 0, 5, buf, sizeof(buf), err, sizeof(err)), 0);
    CHECK(strstr(buf, "'a\\nb'") != NULL);

    /* Empty range, and a buffer too small (exact fit minus one). */
    CHECK_INT(tly_influx_build_select(&model, "a", 5, 5, buf, sizeof(buf), err, sizeof(err)), -1);
    CHECK(strstr(err, "empty time range") != NULL);
    CHECK_INT(tly_influx_build_select(&model, "pod-a", 0, 1, buf, sizeof(buf), err, sizeof(err)),
              0);
    {
        size_t need = strlen(buf) + 1;
        char *exact = malloc(need);
        CHECK(exact);
        CHECK_INT(tly_influx_build_select(&model, "pod-a", 0, 1, exact, need, err, sizeof(err)), 0);
        CHECK_STR(exact, buf);
        CHECK_INT(tly_influx_build_select(&model, "pod-a", 0, 1, exact, need - 1, err, sizeof(err)),
                  -1);
        free(exact);
    }
end:;
}

static void test_request_target(void)
{
    char *target = tly_influx_request_target(
        "", "tele metry", NULL,
        "SELECT *::field FROM \"t\" WHERE \"pod\" = 'a&b=c' AND time >= 1ms");
    char *with_rp = NULL;
    CHECK(target);
    CHECK_STR(target,
              "/query?db=tele%20metry&epoch=ms&q=SELECT%20%2A%3A%3Afield%20FROM%20%22t%22%20"
              "WHERE%20%22pod%22%20%3D%20%27a%26b%3Dc%27%20AND%20time%20%3E%3D%201ms");
    with_rp = tly_influx_request_target("/influx", "db", "rp/1", "q~_.-");
    CHECK(with_rp);
    CHECK_STR(with_rp, "/influx/query?db=db&rp=rp%2F1&epoch=ms&q=q~_.-");
end:
    free(target);
    free(with_rp);
}

/* ---------------------------------------------------------------- answers --- */

struct collected {
    char lines[64][160];
    int count;
    int fail_at; /* the callback fails on this reading (1-based), 0: never */
};

static int collect(void *opaque, const char *device, const char *sensor, int64_t time_ms,
                   json_object *value, char *errbuf, size_t errlen)
{
    struct collected *c = opaque;
    if (c->count == 64)
        return -1;
    snprintf(c->lines[c->count++], sizeof(c->lines[0]), "%s|%s|%" PRId64 "|%s", device, sensor,
             time_ms, json_object_to_json_string_ext(value, JSON_C_TO_STRING_PLAIN));
    if (c->fail_at && c->count == c->fail_at) {
        snprintf(errbuf, errlen, "stop here");
        return -1;
    }
    return 0;
}

static void test_parse(void)
{
    /* Two series (by VIN), one without the tag, null cells skipped, numbers
     * kept as written, every JSON type a field can have. */
    static const char body[] =
        "{\"results\":[{\"statement_id\":0,\"series\":["
        "{\"name\":\"telemetry\",\"tags\":{\"vin\":\"V1\"},\"columns\":[\"time\",\"door\",\"ok\","
        "\"rpm\",\"speed\"],"
        "\"values\":[[1700000000002,null,null,3000,12.50],[1700000000001,\"open\",true,null,null]]}"
        ","
        "{\"name\":\"telemetry\",\"tags\":{\"vin\":\"\"},\"columns\":[\"time\",\"speed\"],"
        "\"values\":[[5,1]]},"
        "{\"name\":\"telemetry\",\"columns\":[\"speed\",\"time\"],\"values\":[[2e1,6]]}"
        "]}]}\n"; /* InfluxDB ends with a newline */
    struct collected c = {0};
    char err[256];

    CHECK_INT(tly_influx_parse(body, strlen(body), "vin", collect, &c, err, sizeof(err)), 0);
    CHECK_INT(c.count, 6);
    CHECK_STR(c.lines[0], "V1|rpm|1700000000002|3000");
    CHECK_STR(c.lines[1], "V1|speed|1700000000002|12.50");
    CHECK_STR(c.lines[2], "V1|door|1700000000001|\"open\"");
    CHECK_STR(c.lines[3], "V1|ok|1700000000001|true");
    CHECK_STR(c.lines[4], "|speed|5|1");
    CHECK_STR(c.lines[5], "|speed|6|2e1"); /* time need not be the first column */

    /* Nothing in the range; several results. */
    c.count = 0;
    CHECK_INT(tly_influx_parse("{\"results\":[{\"statement_id\":0}]}", 32, "vin", collect, &c, err,
                               sizeof(err)),
              0);
    CHECK_INT(c.count, 0);

    /* The callback's error stops the parse and is returned. */
    c.count = 0;
    c.fail_at = 2;
    CHECK_INT(tly_influx_parse(body, strlen(body), "vin", collect, &c, err, sizeof(err)), -1);
    CHECK_STR(err, "stop here");
    CHECK_INT(c.count, 2);
end:;
}

static void test_parse_errors(void)
{
    static const struct {
        const char *body, *expect;
    } cases[] = {
        {"{\"error\":\"error parsing query: found SELEC\"}",
         "influxdb: error parsing query: found SELEC"},
        {"{\"results\":[{\"statement_id\":0,\"error\":\"database not found: nope\"}]}",
         "influxdb: database not found: nope"},
        {"{\"results\":[{\"statement_id\":0,\"partial\":true,\"series\":[]}]}", "partial answer"},
        {"{\"results\":[{\"statement_id\":0,\"series\":[{\"name\":\"t\",\"partial\":true,"
         "\"columns\":[\"time\"],\"values\":[]}]}]}",
         "partial answer"},
        {"{\"results\":[{\"series\":[{\"columns\":[\"time\",\"x\"],\"values\":[[\"2023-11-14T22:13:"
         "20Z\",1]]}]}]}",
         "not epoch milliseconds"},
        {"{\"results\":[{\"series\":[{\"columns\":[\"time\",\"x\"],\"values\":[[1]]}]}]}",
         "does not match the columns"},
        {"{\"results\":[{\"series\":[{\"columns\":[\"x\"],\"values\":[[1]]}]}]}",
         "without a \"time\" column"},
        {"{\"results\":[{\"series\":[{\"values\":[[1]]}]}]}", "without \"columns\""},
        {"{\"results\":{}}", "without \"results\""},
        {"{\"results\":[{\"statement_id\":0}]", "not JSON"},
        {"{\"results\":[]} x", "not JSON"},
        {"<html>bad gateway</html>", "not JSON"},
        {"[1]", "not a JSON object"},
    };
    struct collected c = {0};
    char err[256];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        err[0] = '\0';
        CHECK_MSG(tly_influx_parse(cases[i].body, strlen(cases[i].body), "vin", collect, &c, err,
                                   sizeof(err)) == -1,
                  "case %zu parsed: %s", i, cases[i].body);
        CHECK_MSG(strstr(err, cases[i].expect) != NULL, "case %zu: \"%s\" lacks \"%s\"", i, err,
                  cases[i].expect);
    }
end:;
}

/* ------------------------------------------------------------------ latest --- */

static int add(tly_latest *latest, const char *vin, const char *sensor, int64_t t, const char *json)
{
    json_object *v = json_tokener_parse(json);
    int rc = tly_latest_add(latest, vin, sensor, t, v);
    json_object_put(v); /* the set took its own reference */
    return rc;
}

static void test_latest(void)
{
    tly_latest *latest = tly_latest_new();
    char *record = NULL;
    size_t len = 0;

    CHECK(latest);
    /* Out of order: the newest time wins whatever the order of arrival. */
    CHECK_INT(add(latest, "V2", "speed", 100, "10"), 1);
    CHECK_INT(add(latest, "V1", "temp", 50, "20.50"), 1);
    CHECK_INT(add(latest, "V2", "speed", 300, "30"), 1);
    CHECK_INT(add(latest, "V2", "speed", 200, "20"), 0);
    CHECK_INT(add(latest, "V2", "door", 150, "\"open\""), 1);
    CHECK_INT(add(latest, "V2", "alpha", 120, "true"), 1);
    /* Equal time: the later one wins. */
    CHECK_INT(add(latest, "V1", "temp", 50, "21"), 1);
    /* "id" would replace the VIN. */
    CHECK_INT(add(latest, "V1", "id", 999, "\"X\""), 0);
    CHECK_INT(tly_latest_count(latest), 2);
    CHECK_STR(tly_latest_vin(latest, 0), "V2");
    CHECK_STR(tly_latest_vin(latest, 1), "V1");

    /* Sensors by name; received_at the newest reading; numbers as written. */
    record = tly_latest_record(latest, 0, 777, &len);
    CHECK(record);
    CHECK_STR(record, "{\"data\":{\"id\":\"V2\",\"alpha\":true,\"door\":\"open\",\"speed\":30},"
                      "\"received_at\":300,\"produced_at\":777}");
    CHECK_INT(len, strlen(record));
    free(record);
    record = tly_latest_record(latest, 1, 778, &len);
    CHECK_STR(record,
              "{\"data\":{\"id\":\"V1\",\"temp\":21},\"received_at\":50,\"produced_at\":778}");
    free(record);
    record = NULL;
    CHECK(tly_latest_record(latest, 2, 0, &len) == NULL);

    /* A VIN that needs escaping stays valid JSON. */
    CHECK_INT(add(latest, "V\"3", "x/y", 1, "1"), 1);
    record = tly_latest_record(latest, 2, 1, &len);
    CHECK_STR(record,
              "{\"data\":{\"id\":\"V\\\"3\",\"x/y\":1},\"received_at\":1,\"produced_at\":1}");
    free(record);
    record = NULL;

    /* Cleared, it starts over; many VINs still find their own entry. */
    tly_latest_clear(latest);
    CHECK_INT(tly_latest_count(latest), 0);
    for (int i = 0; i < 5000; i++) {
        char vin[32];
        snprintf(vin, sizeof(vin), "VIN%05d", i);
        CHECK_INT(add(latest, vin, "s", i, "1"), 1);
    }
    for (int i = 0; i < 5000; i++) {
        char vin[32];
        snprintf(vin, sizeof(vin), "VIN%05d", i);
        CHECK_INT(add(latest, vin, "s", i + 1, "2"), 1);
    }
    CHECK_INT(tly_latest_count(latest), 5000);
    record = tly_latest_record(latest, 4999, 0, &len);
    CHECK_STR(record,
              "{\"data\":{\"id\":\"VIN04999\",\"s\":2},\"received_at\":5000,\"produced_at\":0}");
end:
    free(record);
    tly_latest_free(latest);
    tly_latest_free(NULL);
}

/* -------------------------------------------------------------- resource map --- */

static int write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fputs(text, f);
    return fclose(f);
}

static void test_resource_map(void)
{
    const char *dir = tly_test_dir();
    char path[256], err[512];
    tly_influx_map *map = NULL;

    snprintf(path, sizeof(path), "%s/map.txt", dir);
    CHECK_INT(write_file(path, "# pod device vin\n"
                               "pod-a dev-1 VIN-A1\n"
                               "\n"
                               "pod-b\tdev-1\tVIN-B1   \r\n"
                               "   # indented comment\n"
                               "pod-a dev-2 VIN-A2\n"),
              0);
    CHECK_INT(tly_influx_map_load(path, &map, err, sizeof(err)), 0);
    CHECK_STR(tly_influx_map_vin(map, "pod-a", "dev-1"), "VIN-A1");
    CHECK_STR(tly_influx_map_vin(map, "pod-b", "dev-1"), "VIN-B1");
    CHECK_STR(tly_influx_map_vin(map, "pod-a", "dev-2"), "VIN-A2");
    CHECK(tly_influx_map_vin(map, "pod-b", "dev-2") == NULL);
    CHECK(tly_influx_map_vin(map, "pod-c", "dev-1") == NULL);
    CHECK_INT(tly_influx_map_pod_count(map), 2);
    CHECK_STR(tly_influx_map_pod(map, 0), "pod-a");
    CHECK_STR(tly_influx_map_pod(map, 1), "pod-b");
    tly_influx_map_free(map);
    map = NULL;

    CHECK_INT(write_file(path, "pod-a dev-1 VIN1\npod-a dev-1 VIN2\n"), 0);
    CHECK_INT(tly_influx_map_load(path, &map, err, sizeof(err)), -1);
    CHECK(strstr(err, ":2: pod pod-a device dev-1 is listed twice") != NULL);
    CHECK_INT(write_file(path, "pod-a dev-1\n"), 0);
    CHECK_INT(tly_influx_map_load(path, &map, err, sizeof(err)), -1);
    CHECK(strstr(err, ":1: expected \"POD DEVICE VIN\", got 2 field(s)") != NULL);
    CHECK_INT(write_file(path, "# nothing\n\n"), 0);
    CHECK_INT(tly_influx_map_load(path, &map, err, sizeof(err)), -1);
    CHECK(strstr(err, "lists no device") != NULL);
    snprintf(path, sizeof(path), "%s/missing.txt", dir);
    CHECK_INT(tly_influx_map_load(path, &map, err, sizeof(err)), -1);
    CHECK(strstr(err, "cannot open resource map") != NULL);
    CHECK(map == NULL);
end:
    tly_influx_map_free(map);
}

/* ----------------------------------------------------------------- retries --- */

static void test_backoff(void)
{
    /* 1 s doubling to a 30 s cap: 1, 2, 4, 8, 16, 30, 30, ... */
    static const int64_t expected[] = {1000, 2000, 4000, 8000, 16000, 30000, 30000};
    for (int attempt = 1; attempt <= 7; attempt++)
        CHECK_INT(tly_influx_ingest_backoff_ms(attempt, 1000, 30000), expected[attempt - 1]);
    CHECK_INT(tly_influx_ingest_backoff_ms(1000, 1000, 30000), 30000); /* no overflow */
    CHECK_INT(tly_influx_ingest_backoff_ms(62, INT64_MAX / 3, INT64_MAX), INT64_MAX);
    CHECK_INT(tly_influx_ingest_backoff_ms(3, 250, 600), 600);
    CHECK_INT(tly_influx_ingest_backoff_ms(1, 5000, 2000), 2000); /* the cap wins */
end:;
}

/* -------------------------------------------------------------- checkpoint --- */

static void test_checkpoint(void)
{
    const char *dir = tly_test_dir();
    char path[256], tmp[300], err[512];
    int64_t end_ms = -1;
    struct stat st;

    snprintf(path, sizeof(path), "%s/influx.checkpoint", dir);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    CHECK_INT(tly_checkpoint_read(path, &end_ms, err, sizeof(err)), 0);
    CHECK_INT(tly_checkpoint_write(path, 1700000000123, err, sizeof(err)), 0);
    CHECK_INT(tly_checkpoint_read(path, &end_ms, err, sizeof(err)), 1);
    CHECK_INT(end_ms, 1700000000123);
    CHECK(stat(tmp, &st) < 0 && errno == ENOENT); /* renamed, not left behind */
    CHECK_INT(tly_checkpoint_write(path, 1700000009999, err, sizeof(err)), 0);
    CHECK_INT(tly_checkpoint_read(path, &end_ms, err, sizeof(err)), 1);
    CHECK_INT(end_ms, 1700000009999);

    /* Anything but a checkpoint is refused, never read as "none". */
    CHECK_INT(write_file(path, "tally-checkpoint 1 end_ms=17000000x\n"), 0);
    CHECK_INT(tly_checkpoint_read(path, &end_ms, err, sizeof(err)), -1);
    CHECK(strstr(err, "damaged") != NULL);
    CHECK_INT(write_file(path, "tally-checkpoint 1 end_ms=1700000000000"),
              0); /* torn: no newline */
    CHECK_INT(tly_checkpoint_read(path, &end_ms, err, sizeof(err)), -1);
    CHECK_INT(write_file(path, ""), 0);
    CHECK_INT(tly_checkpoint_read(path, &end_ms, err, sizeof(err)), -1);
    CHECK(strstr(err, "not a tally checkpoint") != NULL);
    CHECK_INT(write_file(path, "tally-checkpoint 2 end_ms=1\n"), 0);
    CHECK_INT(tly_checkpoint_read(path, &end_ms, err, sizeof(err)), -1);

    /* A directory that does not exist: the write fails and says where. */
    snprintf(path, sizeof(path), "%s/no/such/dir/cp", dir);
    CHECK_INT(tly_checkpoint_write(path, 1, err, sizeof(err)), -1);
    CHECK(strstr(err, "cannot create") != NULL);
end:;
}

/* ----------------------------------------------------------- ingest cycle --- */

static void test_next_range(void)
{
    int64_t to_ms = -1, end_ms = -1;

    /* Caught up: the range ends --settle before now. */
    CHECK_INT(tly_influx_ingest_next_range(10000, 25000, 1000, 60000, &to_ms, &end_ms), 1);
    CHECK_INT(to_ms, 24000);
    CHECK_INT(end_ms, 24000);
    /* Behind: at most --max-cycle-span; end_ms - to_ms is how far behind. */
    CHECK_INT(tly_influx_ingest_next_range(0, 200000, 1000, 60000, &to_ms, &end_ms), 1);
    CHECK_INT(to_ms, 60000);
    CHECK_INT(end_ms, 199000);
    /* Exactly one span to go: one whole range, and caught up. */
    CHECK_INT(tly_influx_ingest_next_range(0, 61000, 1000, 60000, &to_ms, &end_ms), 1);
    CHECK_INT(to_ms, 60000);
    CHECK_INT(end_ms, 60000);
    /* One millisecond past the settle time is a range of one millisecond. */
    CHECK_INT(tly_influx_ingest_next_range(10000, 11001, 1000, 60000, &to_ms, &end_ms), 1);
    CHECK_INT(to_ms, 10001);
    /* Nothing yet: within the settle time, or a clock that stepped back. */
    CHECK_INT(tly_influx_ingest_next_range(10000, 11000, 1000, 60000, &to_ms, &end_ms), 0);
    CHECK_INT(tly_influx_ingest_next_range(10000, 10500, 1000, 60000, &to_ms, &end_ms), 0);
    CHECK_INT(tly_influx_ingest_next_range(10000, 5000, 0, 60000, &to_ms, &end_ms), 0);
end:;
}

static char fold_error[512];

/* tly_influx_ingest_fold of a NUL-terminated answer, with the counts written
 * as "R read, S skipped" into counts_text (its error into fold_error).
 * Returns the fold's result. */
static int fold(tly_latest *latest, const tly_influx_map *map, const char *pod,
                const char *device_tag, const char *answer, char counts_text[64])
{
    tly_influx_fold_counts counts = {99, 99}; /* a failed fold must clear them */
    int rc = tly_influx_ingest_fold(latest, map, pod, device_tag, answer, strlen(answer), &counts,
                                    fold_error, sizeof(fold_error));
    snprintf(counts_text, 64, "%" PRId64 " read, %" PRId64 " skipped", counts.readings,
             counts.skipped);
    return rc;
}

/* The record of vehicle i of latest with produced_at 0, or "" (for CHECK_STR). */
static const char *record_of(tly_latest *latest, size_t i, char *buf, size_t buflen)
{
    size_t len;
    char *record = tly_latest_record(latest, i, 0, &len);
    snprintf(buf, buflen, "%s", record ? record : "");
    free(record);
    return buf;
}

static void test_fold(void)
{
    /* V1 in two rows (rpm twice: the newer wins), then readings without a
     * VIN: an empty tag and no tags at all. */
    static const char answer[] =
        "{\"results\":[{\"statement_id\":0,\"series\":["
        "{\"name\":\"telemetry\",\"tags\":{\"vin\":\"V1\"},\"columns\":[\"time\",\"rpm\","
        "\"speed\"],\"values\":[[2000,3000,null],[1000,2500,12.5]]},"
        "{\"name\":\"telemetry\",\"tags\":{\"vin\":\"\"},\"columns\":[\"time\",\"speed\"],"
        "\"values\":[[5,1]]},"
        "{\"name\":\"telemetry\",\"columns\":[\"time\",\"speed\"],\"values\":[[6,2]]}"
        "]}]}\n";
    /* V2's reading, then a series InfluxDB cut short. */
    static const char partial[] =
        "{\"results\":[{\"statement_id\":0,\"series\":["
        "{\"name\":\"telemetry\",\"tags\":{\"vin\":\"V2\"},\"columns\":[\"time\",\"speed\"],"
        "\"values\":[[7,70]]},"
        "{\"name\":\"telemetry\",\"tags\":{\"vin\":\"V3\"},\"partial\":true,"
        "\"columns\":[\"time\",\"speed\"],\"values\":[[8,80]]}"
        "]}]}\n";
    tly_latest *latest = tly_latest_new();
    char counts[64], record[256];

    CHECK(latest);
    CHECK_INT(fold(latest, NULL, "pod-a", "vin", answer, counts), 0);
    CHECK_STR(counts, "3 read, 2 skipped");
    CHECK_INT(tly_latest_count(latest), 1);
    CHECK_STR(record_of(latest, 0, record, sizeof(record)),
              "{\"data\":{\"id\":\"V1\",\"rpm\":3000,\"speed\":12.5},\"received_at\":2000,"
              "\"produced_at\":0}");

    /* A failed answer counts nothing; what it added before the failure stays
     * (reading the range again adds the same again). */
    CHECK_INT(fold(latest, NULL, "pod-a", "vin", partial, counts), -1);
    CHECK_MSG(strstr(fold_error, "partial answer") != NULL, "%s", fold_error);
    CHECK_STR(counts, "0 read, 0 skipped");
    CHECK_INT(tly_latest_count(latest), 2);
    CHECK_STR(tly_latest_vin(latest, 1), "V2");
end:
    tly_latest_free(latest);
}

static void test_fold_map(void)
{
    /* dev-1, a device the map lacks, then dev-1 again: each series's device
     * is looked up anew, in the answer's pod. */
    static const char answer[] =
        "{\"results\":[{\"statement_id\":0,\"series\":["
        "{\"name\":\"telemetry\",\"tags\":{\"device\":\"dev-1\"},\"columns\":[\"time\",\"speed\"],"
        "\"values\":[[10,1]]},"
        "{\"name\":\"telemetry\",\"tags\":{\"device\":\"dev-9\"},\"columns\":[\"time\",\"speed\"],"
        "\"values\":[[11,2],[12,3]]},"
        "{\"name\":\"telemetry\",\"tags\":{\"device\":\"dev-1\"},\"columns\":[\"time\",\"rpm\"],"
        "\"values\":[[13,4]]}"
        "]}]}\n";
    const char *dir = tly_test_dir();
    tly_influx_map *map = NULL;
    tly_latest *latest = tly_latest_new();
    char path[256], err[512], counts[64], record[256];

    snprintf(path, sizeof(path), "%s/map.txt", dir);
    CHECK_INT(write_file(path, "pod-a dev-1 VIN-A1\npod-b dev-1 VIN-B1\n"), 0);
    CHECK_INT(tly_influx_map_load(path, &map, err, sizeof(err)), 0);
    CHECK(latest);
    CHECK_INT(fold(latest, map, "pod-a", "device", answer, counts), 0);
    CHECK_STR(counts, "2 read, 2 skipped");
    CHECK_INT(tly_latest_count(latest), 1);
    CHECK_STR(record_of(latest, 0, record, sizeof(record)),
              "{\"data\":{\"id\":\"VIN-A1\",\"rpm\":4,\"speed\":1},\"received_at\":13,"
              "\"produced_at\":0}");
    /* The same device id in another pod is another vehicle. */
    CHECK_INT(fold(latest, map, "pod-b", "device", answer, counts), 0);
    CHECK_STR(counts, "2 read, 2 skipped");
    CHECK_INT(tly_latest_count(latest), 2);
    CHECK_STR(tly_latest_vin(latest, 1), "VIN-B1");
    /* A pod the map does not know: every reading is skipped. */
    CHECK_INT(fold(latest, map, "pod-c", "device", answer, counts), 0);
    CHECK_STR(counts, "0 read, 4 skipped");
    CHECK_INT(tly_latest_count(latest), 2);
end:
    tly_latest_free(latest);
    tly_influx_map_free(map);
}

/* What open refuses before it reads anything or talks to Kafka: settings
 * that cannot work (TLY_INFLUX_INGEST_BAD_CONFIG, the CLI's exit 2) apart
 * from a checkpoint that cannot be read (-1, exit 1). */
static void test_ingest_open_refuses(void)
{
    static volatile sig_atomic_t stop;
    const char *dir = tly_test_dir();
    char long_pod[5000], path[256], err[512];
    const char *pods[] = {"pod-a", long_pod};
    tly_influx_ingest *ingest = NULL;
    tly_influx_ingest_config config = {
        .influx = {.url = "http://127.0.0.1:1", .database = "db"},
        .model = model,
        .pods = pods,
        .pod_count = 1,
        /* Never reached: every case below fails before Kafka. */
        .brokers = "127.0.0.1:1",
        .topic = "t",
        .delivery_timeout_ms = 1000,
        .retry_attempts = 1,
        .stop = &stop,
    };

    memset(long_pod, 'p', sizeof(long_pod) - 1);
    long_pod[sizeof(long_pod) - 1] = '\0';
    config.pod_count = 2;
    CHECK_INT(tly_influx_ingest_open(&config, &ingest, err, sizeof(err)),
              TLY_INFLUX_INGEST_BAD_CONFIG);
    CHECK_MSG(strstr(err, "is longer than 4096 bytes") != NULL, "%s", err);
    CHECK(ingest == NULL);

    config.pod_count = 1;
    config.influx.url = "https://127.0.0.1:1";
    CHECK_INT(tly_influx_ingest_open(&config, &ingest, err, sizeof(err)),
              TLY_INFLUX_INGEST_BAD_CONFIG);
    CHECK_MSG(strstr(err, "only http://") != NULL, "%s", err);

    config.influx.url = "http://127.0.0.1:1";
    snprintf(path, sizeof(path), "%s/influx.checkpoint", dir);
    CHECK_INT(write_file(path, "tally-checkpoint 1 end_ms=oops\n"), 0);
    config.checkpoint_path = path;
    CHECK_INT(tly_influx_ingest_open(&config, &ingest, err, sizeof(err)), -1);
    CHECK_MSG(strstr(err, path) != NULL, "%s", err);
    CHECK(ingest == NULL);
end:
    tly_influx_ingest_free(ingest);
    tly_influx_ingest_free(NULL);
}

/* ---------------------------------------------------------------- client --- */

static void test_open_options(void)
{
    tly_influx *client = NULL;
    char err[512];
    tly_influx_options o = {.url = "http://127.0.0.1:18999/prefix/", .database = "db"};

    CHECK_INT(tly_influx_open(&o, &client, err, sizeof(err)), 0);
    tly_influx_close(client);
    client = NULL;
    o.url = "https://example.com";
    CHECK_INT(tly_influx_open(&o, &client, err, sizeof(err)), -1);
    CHECK(strstr(err, "only http://") != NULL);
    o.url = "http://user:pw@127.0.0.1:8086";
    CHECK_INT(tly_influx_open(&o, &client, err, sizeof(err)), -1);
    o.url = "not a url";
    CHECK_INT(tly_influx_open(&o, &client, err, sizeof(err)), -1);
    o.url = "http://127.0.0.1:18999";
    o.username = "u";
    CHECK_INT(tly_influx_open(&o, &client, err, sizeof(err)), -1);
    o.password = "p";
    o.token = "t";
    CHECK_INT(tly_influx_open(&o, &client, err, sizeof(err)), -1);
    o.token = NULL;
    CHECK_INT(tly_influx_open(&o, &client, err, sizeof(err)), 0);
    tly_influx_close(client);
    client = NULL;
    o.database = "";
    CHECK_INT(tly_influx_open(&o, &client, err, sizeof(err)), -1);
    CHECK(client == NULL);
end:
    tly_influx_close(client);
    tly_influx_close(NULL);
}

/* Nobody listens on port 1 of loopback: the query fails with a reason
 * instead of hanging, and the client stays usable. */
static void test_query_refused(void)
{
    tly_influx *client = NULL;
    tly_influx_options o = {.url = "http://127.0.0.1:1", .database = "db", .timeout_ms = 2000};
    const char *body;
    size_t len;
    char err[512];

    CHECK_INT(tly_influx_open(&o, &client, err, sizeof(err)), 0);
    CHECK_INT(tly_influx_query(client, "SELECT 1", &body, &len, err, sizeof(err)), -1);
    CHECK_MSG(strstr(err, "http://127.0.0.1:1") != NULL, "%s", err);
    /* A second query on the same client works the same way. */
    CHECK_INT(tly_influx_query(client, "SELECT 1", &body, &len, err, sizeof(err)), -1);
end:
    tly_influx_close(client);
}

static const tly_testcase cases[] = {{"build_select", test_build_select},
                                     {"request_target", test_request_target},
                                     {"parse", test_parse},
                                     {"parse_errors", test_parse_errors},
                                     {"latest", test_latest},
                                     {"resource_map", test_resource_map},
                                     {"backoff", test_backoff},
                                     {"checkpoint", test_checkpoint},
                                     {"next_range", test_next_range},
                                     {"fold", test_fold},
                                     {"fold_map", test_fold_map},
                                     {"ingest_open_refuses", test_ingest_open_refuses},
                                     {"open_options", test_open_options},
                                     {"query_refused", test_query_refused},
                                     {NULL, NULL}};

int main(int argc, char **argv)
{
    return tly_test_main(argc, argv, cases);
}
