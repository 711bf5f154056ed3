/* tests/unit/test_decimal.c - exact decimal parsing and formatting. */
#include "tly_test.h"

#include "decimal.h"

#include <stdint.h>

static int64_t parse6(const char *s, int *ok)
{
    int64_t v = 0;
    char err[128];
    *ok = tly_decimal_parse(s, strlen(s), 6, &v, err, sizeof(err)) == 0;
    return v;
}

static void test_parse_exact(void)
{
    int ok;
    CHECK_INT(parse6("83.71", &ok), 83710000);
    CHECK(ok);
    CHECK_INT(parse6("0", &ok), 0);
    CHECK(ok);
    CHECK_INT(parse6("-0.5", &ok), -500000);
    CHECK(ok);
    CHECK_INT(parse6("0.000001", &ok), 1);
    CHECK(ok);
    CHECK_INT(parse6("1.5000000000", &ok), 1500000);
    CHECK(ok); /* trailing zeros are exact */
    CHECK_INT(parse6("8.371e1", &ok), 83710000);
    CHECK(ok);
    CHECK_INT(parse6("8371E-2", &ok), 83710000);
    CHECK(ok);
    CHECK_INT(parse6("1e3", &ok), 1000000000);
    CHECK(ok);
    CHECK_INT(parse6("9223372036854.775807", &ok), INT64_MAX);
    CHECK(ok);
    CHECK_INT(parse6("-9223372036854.775808", &ok), INT64_MIN);
    CHECK(ok);
end:;
}

static void test_parse_rejects(void)
{
    const char *bad[] = {"",     "-",   "1.",  ".5",       "1.0000001", "1e-7",
                         "abc",  "1,5", "NaN", "Infinity", "1e400",     "9223372036854.775808",
                         "0x10", " 1",  "1 ",  "--1",      "1e",        "1e+",
                         NULL};
    for (const char **s = bad; *s; s++) {
        int64_t v;
        char err[128] = "";
        CHECK_MSG(tly_decimal_parse(*s, strlen(*s), 6, &v, err, sizeof(err)) < 0, "accepted \"%s\"",
                  *s);
        CHECK_MSG(err[0] != '\0', "no message for \"%s\"", *s);
    }
end:;
}

static void test_money_is_exact(void)
{
    /* The classic: 83.71 * 3 in binary floating point is 251.12999999999997. */
    int ok;
    char buf[32];
    int64_t price = parse6("83.71", &ok);
    CHECK(ok);
    CHECK(tly_decimal_format(price * 3, 6, buf, sizeof(buf)) > 0);
    CHECK_STR(buf, "251.13");
    /* 0.1 + 0.2 */
    CHECK(tly_decimal_format(parse6("0.1", &ok) + parse6("0.2", &ok), 6, buf, sizeof(buf)) > 0);
    CHECK_STR(buf, "0.30");
end:;
}

static void test_format(void)
{
    char buf[32];
    struct {
        int64_t v;
        const char *s;
    } cases[] = {{0, "0.00"},      {10500000, "10.50"}, {-3125000, "-3.125"},
                 {7, "0.000007"},  {-7, "-0.000007"},   {INT64_MIN, "-9223372036854.775808"},
                 {1000000, "1.00"}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        CHECK(tly_decimal_format(cases[i].v, 6, buf, sizeof(buf)) > 0);
        CHECK_STR(buf, cases[i].s);
    }
    CHECK(tly_decimal_format(123, 0, buf, sizeof(buf)) > 0);
    CHECK_STR(buf, "123.00");
    CHECK(tly_decimal_format(123, 6, buf, 4) < 0);
end:;
}

static const tly_testcase cases[] = {{"parse_exact", test_parse_exact},
                                     {"parse_rejects", test_parse_rejects},
                                     {"money_is_exact", test_money_is_exact},
                                     {"format", test_format},
                                     {NULL, NULL}};

int main(int argc, char **argv)
{
    return tly_test_main(argc, argv, cases);
}
