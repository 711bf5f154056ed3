/* tests/unit/test_log.c - log lines: logfmt by default; in JSON mode every
 * line is one object whose members keep the logfmt pairs' values (numbers as
 * numbers, quoted values unescaped, control characters escaped); levels
 * filter. */
#include "tly_test.h"

#include "log.h"

#include <json-c/json.h>

/* Runs fn with stderr going to a file; returns the file's contents (malloc'ed). */
static char *capture(void (*fn)(void))
{
    char path[] = "/tmp/tally-test-log-XXXXXX", *text = NULL;
    int fd = mkstemp(path), saved = dup(2);
    FILE *f;
    long len;

    if (fd < 0 || saved < 0)
        return NULL;
    fflush(stderr);
    dup2(fd, 2);
    fn();
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    close(fd);
    if ((f = fopen(path, "r"))) {
        fseek(f, 0, SEEK_END);
        len = ftell(f);
        rewind(f);
        if ((text = calloc(1, (size_t)len + 1)) && fread(text, 1, (size_t)len, f) != (size_t)len) {
            free(text);
            text = NULL;
        }
        fclose(f);
    }
    unlink(path);
    return text;
}

static void log_tricky(void)
{
    char q1[128], q2[128];
    tly_log("info", "flush", "vin_count=12 ratio=-2.50 id=007 zero=0 word=abc quote=%s ctl=%s flag",
            tly_log_quote("he said \"hi\" \\ ok", q1, sizeof(q1)),
            tly_log_quote("a\tb", q2, sizeof(q2)));
    tly_log("debug", "hidden", "x=1");
}

static void test_logfmt(void)
{
    char *text = NULL;
    CHECK(tly_log_set_format("logfmt") == 0);
    CHECK((text = capture(log_tricky)) != NULL);
    CHECK_MSG(strstr(text, " level=info event=flush vin_count=12 ratio=-2.50 id=007 ") != NULL,
              "%s", text);
    CHECK_MSG(strstr(text, "quote=\"he said \\\"hi\\\" \\\\ ok\"") != NULL, "%s", text);
    CHECK(strstr(text, "hidden") == NULL); /* below the default level */
end:
    free(text);
}

static void test_json(void)
{
    char *text = NULL;
    json_object *obj = NULL, *v;
    CHECK(tly_log_set_format("json") == 0);
    CHECK((text = capture(log_tricky)) != NULL);
    CHECK_MSG(strchr(text, '\n') == text + strlen(text) - 1, "one line expected: %s", text);
    CHECK_MSG((obj = json_tokener_parse(text)) != NULL, "not JSON: %s", text);
    CHECK(json_object_object_get_ex(obj, "ts", &v) && json_object_is_type(v, json_type_string));
    CHECK(json_object_object_get_ex(obj, "level", &v));
    CHECK_STR(json_object_get_string(v), "info");
    CHECK(json_object_object_get_ex(obj, "event", &v));
    CHECK_STR(json_object_get_string(v), "flush");
    CHECK(json_object_object_get_ex(obj, "vin_count", &v) && json_object_is_type(v, json_type_int));
    CHECK_INT(json_object_get_int64(v), 12);
    CHECK(json_object_object_get_ex(obj, "ratio", &v) && json_object_is_type(v, json_type_double));
    CHECK(json_object_object_get_ex(obj, "zero", &v) && json_object_is_type(v, json_type_int));
    CHECK(json_object_object_get_ex(obj, "id", &v) && json_object_is_type(v, json_type_string));
    CHECK_STR(json_object_get_string(v), "007");
    CHECK(json_object_object_get_ex(obj, "word", &v) && json_object_is_type(v, json_type_string));
    CHECK(json_object_object_get_ex(obj, "quote", &v));
    CHECK_STR(json_object_get_string(v), "he said \"hi\" \\ ok");
    CHECK(json_object_object_get_ex(obj, "ctl", &v));
    CHECK_STR(json_object_get_string(v), "a\tb");
    CHECK(json_object_object_get_ex(obj, "flag", &v) && json_object_is_type(v, json_type_boolean));
end:
    json_object_put(obj);
    free(text);
    tly_log_set_format("logfmt");
}

static void test_bad_settings(void)
{
    CHECK(tly_log_set_format("yaml") < 0);
    CHECK(tly_log_set_level("verbose") < 0);
    CHECK(tly_log_set_level("info") == 0);
end:
    return;
}

static const tly_testcase cases[] = {{"logfmt", test_logfmt},
                                     {"json", test_json},
                                     {"bad_settings", test_bad_settings},
                                     {NULL, NULL}};

int main(int argc, char **argv)
{
    return tly_test_main(argc, argv, cases);
}
