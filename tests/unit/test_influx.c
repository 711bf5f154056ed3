/* tests/unit/test_influx.c - the InfluxDB ingest's parts that need no server:
 * InfluxQL statements and request targets, answer parsing, the latest value
 * per (VIN, sensor) and its records, resource maps, the retry schedule and
 * the checkpoint file. */
#include "tly_test.h"

#include "checkpoint.h"
#include "influx.h"
#include "latest.h"

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
        CHECK_INT(tly_influx_backoff_ms(attempt, 1000, 30000), expected[attempt - 1]);
    CHECK_INT(tly_influx_backoff_ms(1000, 1000, 30000), 30000); /* no overflow */
    CHECK_INT(tly_influx_backoff_ms(62, INT64_MAX / 3, INT64_MAX), INT64_MAX);
    CHECK_INT(tly_influx_backoff_ms(3, 250, 600), 600);
    CHECK_INT(tly_influx_backoff_ms(1, 5000, 2000), 2000); /* the cap wins */
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

static const tly_testcase cases[] = {
    {"build_select", test_build_select},
    {"request_target", test_request_target},
    {"parse", test_parse},
    {"parse_errors", test_parse_errors},
    {"latest", test_latest},
    {"resource_map", test_resource_map},
    {"backoff", test_backoff},
    {"checkpoint", test_checkpoint},
    {"open_options", test_open_options},
    {"query_refused", test_query_refused},
    {NULL, NULL}};

int main(int argc, char **argv) { return tly_test_main(argc, argv, cases); }
