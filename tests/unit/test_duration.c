/* tests/unit/test_duration.c - durations as the seeds write them. */
#include "tly_test.h"

#include "duration.h"

#include <stdint.h>

static void test_accepts(void)
{
    struct {
        const char *text;
        int64_t ms;
    } cases[] = {{"500ms", 500}, {"10s", 10000},    {"2m", 120000},     {"24h", 86400000},
                 {"60", 60000},  {"0.5", 500},      {"1h30m", 5400000}, {"1.5s", 1500},
                 {"0", 0},       {"7d", 604800000}, {"2m10s", 130000}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int64_t ms = -1;
        char err[256];
        CHECK_MSG(tly_duration_parse_ms(cases[i].text, &ms, err, sizeof(err)) == 0, "%s: %s",
                  cases[i].text, err);
        CHECK_MSG(ms == cases[i].ms, "%s -> %lld", cases[i].text, (long long)ms);
    }
end:;
}

static void test_rejects(void)
{
    const char *bad[] = {
        "", "s", "-5s", "10x", "10 s", "1h30", "ms", "abc", "99999999999999999999h", NULL};
    for (const char **s = bad; *s; s++) {
        int64_t ms;
        char err[256] = "";
        CHECK_MSG(tly_duration_parse_ms(*s, &ms, err, sizeof(err)) < 0, "accepted \"%s\"", *s);
        CHECK(strstr(err, "500ms") != NULL); /* the message shows how to write one */
    }
end:;
}

static const tly_testcase cases[] = {
    {"accepts", test_accepts}, {"rejects", test_rejects}, {NULL, NULL}};

int main(int argc, char **argv)
{
    return tly_test_main(argc, argv, cases);
}
