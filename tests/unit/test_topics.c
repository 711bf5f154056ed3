/* tests/unit/test_topics.c - a pipeline's topic layout: the default names and
 * cleanup policies of each pipeline (as topics.h and the README give them),
 * --topic-prefix, --input-topic/--output-topic overrides, and the names Kafka
 * would refuse. No broker. (The meta keys that record Kafka positions are
 * engine/meta.h's: test_partitions.c.) */
#include "tly_test.h"

#include "topics.h"

struct expected_topic {
    const char *name, *policy;
};

/* Checks one spec against its expected name and policy. */
#define CHECK_SPEC(spec, want)                                                                     \
    do {                                                                                           \
        CHECK_STR((spec).name, (want).name);                                                       \
        CHECK_STR((spec).cleanup_policy, (want).policy);                                           \
    } while (0)

/* The defaults of each pipeline, with the default prefix "opb". */
static void test_defaults_per_pipeline(void)
{
    static const struct {
        const char *pipeline;
        struct expected_topic input, output;
    } want[] = {
        {"orders", {"orders.enriched", "delete"}, {"orders.output", "compact"}},
        {"telemetry",
         {"sensor-service.dispatch.telemetry-aggregated", "compact"},
         {"sensor-service.dispatch.telemetry-latest-compacted", "compact"}},
        /* enrich's output is the orders pipeline's input: a stream */
        {"enrich", {"orders", "delete"}, {"orders.enriched", "delete"}},
    };
    static const struct expected_topic changelog = {"opb-changelog", "compact"},
                                       snapshots = {"opb-snapshots", "compact"},
                                       dlq = {"opb-dlq", "delete"};
    tly_topic_layout layout;
    char err[512];

    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        err[0] = '\0';
        CHECK_MSG(
            tly_topics_layout(want[i].pipeline, NULL, NULL, NULL, &layout, err, sizeof(err)) == 0,
            "%s: %s", want[i].pipeline, err);
        CHECK_SPEC(layout.input, want[i].input);
        CHECK_SPEC(layout.output, want[i].output);
        CHECK_SPEC(layout.changelog, changelog);
        CHECK_SPEC(layout.snapshots, snapshots);
        CHECK_SPEC(layout.dlq, dlq);
    }
end:;
}

/* The prefix names the three internal topics and nothing else. */
static void test_prefix(void)
{
    tly_topic_layout layout;
    char err[512] = "";

    CHECK_MSG(tly_topics_layout("orders", "fleet.eu_1", NULL, NULL, &layout, err, sizeof(err)) == 0,
              "%s", err);
    CHECK_STR(layout.changelog.name, "fleet.eu_1-changelog");
    CHECK_STR(layout.snapshots.name, "fleet.eu_1-snapshots");
    CHECK_STR(layout.dlq.name, "fleet.eu_1-dlq");
    CHECK_STR(layout.input.name, "orders.enriched");
    CHECK_STR(layout.output.name, "orders.output");

    err[0] = '\0';
    CHECK(tly_topics_layout("orders", "", NULL, NULL, &layout, err, sizeof(err)) < 0);
    CHECK_MSG(strstr(err, "prefix") != NULL, "%s", err);
end:;
}

/* --input-topic and --output-topic replace the names; the policies stay the
 * pipeline's (they follow the topic's role, not its name). */
static void test_overrides(void)
{
    tly_topic_layout layout;
    char err[512] = "";

    CHECK_MSG(tly_topics_layout("telemetry", "t", "my.in", "My_Out-2", &layout, err, sizeof(err)) ==
                  0,
              "%s", err);
    CHECK_STR(layout.input.name, "my.in");
    CHECK_STR(layout.input.cleanup_policy, "compact");
    CHECK_STR(layout.output.name, "My_Out-2");
    CHECK_STR(layout.output.cleanup_policy, "compact");
    CHECK_STR(layout.changelog.name, "t-changelog");

    /* only one of the two given: the other keeps its default */
    CHECK_MSG(tly_topics_layout("orders", NULL, NULL, "out", &layout, err, sizeof(err)) == 0, "%s",
              err);
    CHECK_STR(layout.input.name, "orders.enriched");
    CHECK_STR(layout.output.name, "out");
    CHECK_STR(layout.output.cleanup_policy, "compact");
    CHECK_MSG(tly_topics_layout("enrich", NULL, "raw", NULL, &layout, err, sizeof(err)) == 0, "%s",
              err);
    CHECK_STR(layout.input.name, "raw");
    CHECK_STR(layout.input.cleanup_policy, "delete");
    CHECK_STR(layout.output.name, "orders.enriched");
end:;
}

static void test_unknown_pipeline(void)
{
    tly_topic_layout layout;
    char err[512] = "";

    CHECK(tly_topics_layout("billing", NULL, NULL, NULL, &layout, err, sizeof(err)) < 0);
    CHECK_MSG(strstr(err, "\"billing\"") != NULL, "%s", err);
    err[0] = '\0';
    CHECK(tly_topics_layout(NULL, NULL, NULL, NULL, &layout, err, sizeof(err)) < 0);
    CHECK(err[0] != '\0');
    /* names are matched exactly */
    CHECK(tly_topics_layout("Orders", NULL, NULL, NULL, &layout, err, sizeof(err)) < 0);
    CHECK(tly_topics_layout("orders ", NULL, NULL, NULL, &layout, err, sizeof(err)) < 0);
end:;
}

/* Kafka's topic name rules: 1 to 249 characters of a-z A-Z 0-9 . _ -, and not
 * "." or "..". Each bad name is tried as the input, as the output and (where
 * it can be) as the prefix; the message names the role. */
static void test_bad_names(void)
{
    static const char *const bad[] = {"",          ".", "..",  "has space", "a/b",
                                      "tab\there", "é", "a:b", "star*",     NULL};
    tly_topic_layout layout;
    char err[512], name[300];

    for (const char *const *b = bad; *b; b++) {
        err[0] = '\0';
        CHECK_MSG(tly_topics_layout("orders", NULL, *b, NULL, &layout, err, sizeof(err)) < 0,
                  "input \"%s\" accepted", *b);
        CHECK_MSG(strstr(err, "input") != NULL, "%s", err);
        err[0] = '\0';
        CHECK_MSG(tly_topics_layout("orders", NULL, NULL, *b, &layout, err, sizeof(err)) < 0,
                  "output \"%s\" accepted", *b);
        CHECK_MSG(strstr(err, "output") != NULL, "%s", err);
    }
    /* "." and ".." are only reserved whole: as part of a name they are fine */
    CHECK(tly_topics_layout("orders", "..", "..x", "x..", &layout, err, sizeof(err)) == 0);
    CHECK_STR(layout.changelog.name, "..-changelog");
    err[0] = '\0';
    CHECK(tly_topics_layout("orders", "a b", NULL, NULL, &layout, err, sizeof(err)) < 0);
    CHECK_MSG(strstr(err, "changelog") != NULL, "%s", err);

    /* 249 characters is the longest name */
    memset(name, 'n', 249);
    name[249] = '\0';
    CHECK_MSG(tly_topics_layout("orders", NULL, name, NULL, &layout, err, sizeof(err)) == 0, "%s",
              err);
    CHECK_INT(strlen(layout.input.name), 249);
    name[249] = 'n';
    name[250] = '\0';
    CHECK(tly_topics_layout("orders", NULL, name, NULL, &layout, err, sizeof(err)) < 0);
    CHECK_MSG(strstr(err, "249") != NULL, "%s", err);

    /* the prefix's suffixes count: "-changelog" and "-snapshots" are 10
     * characters, so a 239-character prefix is the longest */
    memset(name, 'p', 239);
    name[239] = '\0';
    CHECK_MSG(tly_topics_layout("orders", name, NULL, NULL, &layout, err, sizeof(err)) == 0, "%s",
              err);
    CHECK_INT(strlen(layout.snapshots.name), 249);
    name[239] = 'p';
    name[240] = '\0';
    CHECK(tly_topics_layout("orders", name, NULL, NULL, &layout, err, sizeof(err)) < 0);
    /* one too long for the name buffer itself is refused too, not cut short */
    memset(name, 'p', 299);
    name[299] = '\0';
    CHECK(tly_topics_layout("orders", name, NULL, NULL, &layout, err, sizeof(err)) < 0);
    CHECK_MSG(strstr(err, "249") != NULL, "%s", err);
end:;
}

/* One topic in two roles is refused, whichever two. */
static void test_same_topic_twice(void)
{
    static const struct {
        const char *prefix, *input, *output;
    } twice[] = {
        {NULL, "same", "same"},          {NULL, "opb-changelog", NULL}, {NULL, NULL, "opb-dlq"},
        {"x", "x-snapshots", NULL},      {NULL, "orders.output", NULL}, /* orders' default output */
        {NULL, NULL, "orders.enriched"},                                /* orders' default input */
    };
    tly_topic_layout layout;
    char err[512];

    for (size_t i = 0; i < sizeof(twice) / sizeof(twice[0]); i++) {
        err[0] = '\0';
        CHECK_MSG(tly_topics_layout("orders", twice[i].prefix, twice[i].input, twice[i].output,
                                    &layout, err, sizeof(err)) < 0,
                  "case %zu accepted", i);
        CHECK_MSG(strstr(err, "twice") != NULL, "%s", err);
    }
end:;
}

static const tly_testcase cases[] = {{"defaults_per_pipeline", test_defaults_per_pipeline},
                                     {"prefix", test_prefix},
                                     {"overrides", test_overrides},
                                     {"unknown_pipeline", test_unknown_pipeline},
                                     {"bad_names", test_bad_names},
                                     {"same_topic_twice", test_same_topic_twice},
                                     {NULL, NULL}};

int main(int argc, char **argv)
{
    return tly_test_main(argc, argv, cases);
}
