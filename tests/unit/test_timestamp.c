/* tests/unit/test_timestamp.c - event times from epoch ms, epoch seconds and
 * RFC 3339. Expected values were computed independently (GNU date -d ... +%s%3N). */
#include "tly_test.h"

#include "timestamp.h"

#include <stdint.h>

static int parse(const char *text, int64_t *ms, char *err, size_t errlen)
{
    return tly_timestamp_parse(text, strlen(text), ms, err, errlen);
}

static void test_epoch(void)
{
    struct {
        const char *text;
        int64_t ms;
    } cases[] = {
        {"1700000000000", 1700000000000LL},   /* ms */
        {"1700000000", 1700000000000LL},      /* seconds */
        {"1700000000.123", 1700000000123LL},  /* seconds with ms */
        {"1700000000.1239", 1700000000123LL}, /* beyond the ms: truncated */
        {"1700000000.5", 1700000000500LL},
        {"1700000000000.9", 1700000000000LL}, /* a fraction of a ms is dropped */
        {"0", 0},
        {"99999999999", 99999999999000LL},      /* just below the threshold: seconds */
        {"100000000000", 100000000000LL},       /* at the threshold: ms (1973-03-03) */
        {"253402300799999", 253402300799999LL}, /* the last ms of 9999 */
        {"253402300799", 253402300799LL},       /* above the threshold: ms, not year 9999 */
        {"99999999999.999", 99999999999999LL},  /* the latest time in seconds (year 5138) */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int64_t ms = -1;
        char err[256] = "";
        CHECK_MSG(parse(cases[i].text, &ms, err, sizeof(err)) == 0, "%s: %s", cases[i].text, err);
        CHECK_MSG(ms == cases[i].ms, "%s -> %lld, expected %lld", cases[i].text, (long long)ms,
                  (long long)cases[i].ms);
    }
end:;
}

static void test_rfc3339(void)
{
    struct {
        const char *text;
        int64_t ms;
    } cases[] = {
        {"2023-11-14T22:13:20Z", 1700000000000LL},
        {"2023-11-14T22:13:20.123Z", 1700000000123LL},
        {"2023-11-14T22:13:20.1Z", 1700000000100LL},
        {"2023-11-14T22:13:20.123456789Z", 1700000000123LL}, /* truncated */
        {"2023-11-15T05:13:20+07:00", 1700000000000LL},
        {"2023-11-14T17:43:20.5-04:30", 1700000000500LL},
        {"2023-11-14t22:13:20z", 1700000000000LL},
        {"2023-11-14 22:13:20Z", 1700000000000LL},
        {"1970-01-01T00:00:00Z", 0},
        {"1970-01-01T07:00:00+07:00", 0},
        {"2024-02-29T00:00:00Z", 1709164800000LL}, /* leap day */
        {"2000-02-29T12:00:00Z", 951825600000LL},  /* 400-year leap day */
        {"2016-12-31T23:59:60Z", 1483228800000LL}, /* leap second: next minute */
        {"9999-12-31T23:59:59.999Z", 253402300799999LL},
        {"2024-12-31T23:59:59.999+00:00", 1735689599999LL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int64_t ms = -1;
        char err[256] = "";
        CHECK_MSG(parse(cases[i].text, &ms, err, sizeof(err)) == 0, "%s: %s", cases[i].text, err);
        CHECK_MSG(ms == cases[i].ms, "%s -> %lld, expected %lld", cases[i].text, (long long)ms,
                  (long long)cases[i].ms);
    }
end:;
}

static void test_rejects(void)
{
    struct {
        const char *text;
        const char *why;
    } cases[] = {
        {"", "empty"},
        {"-1700000000000", "negative"},
        {"1.7e12", "exponent"},
        {"1700000000000x", "not a time"},
        {"abc", "not a time"},
        {".5", "not a time"},
        {"1700000000.", "not a time"},
        {"99999999999999999", "out of range"},
        {"253402300800000", "out of range"},
        {"2024-13-40T00:00:00Z", "no such date"},
        {"2024-13-01T00:00:00Z", "no such date"},
        {"2023-02-29T00:00:00Z", "no such date"}, /* not a leap year */
        {"1900-02-29T00:00:00Z", "no such date"}, /* century, not a leap year */
        {"2024-04-31T00:00:00Z", "no such date"},
        {"2024-00-10T00:00:00Z", "no such date"},
        {"2024-05-01T24:00:00Z", "no such time"},
        {"2024-05-01T12:60:00Z", "no such time"},
        {"2024-05-01T12:00:61Z", "no such time"},
        {"2024-05-01T12:00:00", "no offset"},
        {"2024-05-01", "no time"},
        {"2024-05-01T12:00Z", "not a time"},
        {"2024-05-01T12:00:00+0700", "not a time"},
        {"2024-05-01T12:00:00+24:00", "offset out of range"},
        {"2024-05-01T12:00:00.Z", "not a time"},
        {"2024-05-01T12:00:00Z ", "not a time"},
        {"1969-12-31T23:59:59Z", "before 1970"},
        {"1970-01-01T00:00:00+00:01", "before 1970"},
        {"9999-12-31T23:59:59-01:00", "after the year 9999"},
        {"24-05-01T12:00:00Z", "not a time"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int64_t ms = 42;
        char err[256] = "";
        CHECK_MSG(parse(cases[i].text, &ms, err, sizeof(err)) < 0, "accepted \"%s\" as %lld",
                  cases[i].text, (long long)ms);
        CHECK_MSG(strstr(err, cases[i].why) != NULL, "\"%s\": message \"%s\" lacks \"%s\"",
                  cases[i].text, err, cases[i].why);
    }
end:;
}

/* Only the given length is read: the text need not end there. */
static void test_length_bound(void)
{
    int64_t ms = -1;
    char err[256] = "";
    CHECK(tly_timestamp_parse("1700000000999", 10, &ms, err, sizeof(err)) == 0);
    CHECK_INT(ms, 1700000000000LL);
    CHECK(tly_timestamp_parse("2023-11-14T22:13:20Zjunk", 20, &ms, err, sizeof(err)) == 0);
    CHECK_INT(ms, 1700000000000LL);
end:;
}

static const tly_testcase cases[] = {{"epoch", test_epoch},
                                     {"rfc3339", test_rfc3339},
                                     {"rejects", test_rejects},
                                     {"length_bound", test_length_bound},
                                     {NULL, NULL}};

int main(int argc, char **argv)
{
    return tly_test_main(argc, argv, cases);
}
