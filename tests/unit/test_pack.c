/* tests/unit/test_pack.c - output records packed into messages (--batch-size):
 * where a pack closes, which key it carries, the JSON array it holds, the
 * counts, reset and finish, and a send that fails. */
#include "tly_test.h"

#include "pack.h"

#define MAX_SENT 16

/* What a send callback received, copied (the pack reuses its buffers). */
struct sent {
    int count;
    int fail_at; /* the send with this index returns 7 (and is not kept); -1: never */
    int attempts;
    char key[MAX_SENT][64];
    size_t key_len[MAX_SENT];
    char *value[MAX_SENT];
    size_t value_len[MAX_SENT];
};

static int collect(void *ctx, const char *key, size_t key_len, const char *value, size_t value_len)
{
    struct sent *s = ctx;
    if (s->attempts++ == s->fail_at)
        return 7;
    if (s->count == MAX_SENT || key_len >= sizeof(s->key[0]) ||
        !(s->value[s->count] = malloc(value_len + 1)))
        return 99;
    memcpy(s->key[s->count], key, key_len);
    s->key[s->count][key_len] = '\0';
    s->key_len[s->count] = key_len;
    memcpy(s->value[s->count], value, value_len);
    s->value[s->count][value_len] = '\0';
    s->value_len[s->count] = value_len;
    s->count++;
    return 0;
}

static void sent_init(struct sent *s)
{
    memset(s, 0, sizeof(*s));
    s->fail_at = -1;
}

static void sent_free(struct sent *s)
{
    for (int i = 0; i < s->count; i++)
        free(s->value[i]);
    s->count = 0;
}

/* Adds a record whose key and value are NUL-terminated strings. */
static int add(tly_pack *p, const char *key, const char *value)
{
    return tly_pack_add(p, key, strlen(key), value, strlen(value));
}

/* Batch size 1: each record is its own message, exactly as given (no array),
 * sent by tly_pack_add itself; finish has nothing left to send. */
static void test_batch_size_one(void)
{
    struct sent s;
    tly_pack *p = NULL;
    /* key and value are read by length, not up to a NUL */
    const char key[] = "VIN0001-and-more", value[] = "{\"id\":1}trailing";

    sent_init(&s);
    CHECK((p = tly_pack_new(1, collect, &s)) != NULL);
    CHECK_INT(tly_pack_add(p, key, 7, value, 8), 0);
    CHECK_INT(s.count, 1);
    CHECK_STR(s.key[0], "VIN0001");
    CHECK_INT(s.key_len[0], 7);
    CHECK_STR(s.value[0], "{\"id\":1}");
    CHECK_INT(s.value_len[0], 8);
    CHECK_INT(add(p, "VIN0002", "{\"id\":2}"), 0);
    CHECK_INT(s.count, 2);
    CHECK_STR(s.key[1], "VIN0002");
    CHECK_STR(s.value[1], "{\"id\":2}");
    CHECK_INT(tly_pack_records(p), 2);
    CHECK_INT(tly_pack_messages(p), 2);
    CHECK_INT(tly_pack_finish(p), 0);
    CHECK_INT(s.count, 2);
    CHECK_INT(tly_pack_messages(p), 2);
end:
    tly_pack_free(p);
    sent_free(&s);
}

/* A batch size below 1 counts as 1. */
static void test_batch_size_below_one(void)
{
    struct sent s;
    tly_pack *p = NULL;
    int sizes[] = {0, -3};

    sent_init(&s);
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        CHECK((p = tly_pack_new(sizes[i], collect, &s)) != NULL);
        CHECK_INT(add(p, "k", "{\"a\":1}"), 0);
        CHECK_MSG(s.count == 1, "batch size %d: %d messages after one record", sizes[i], s.count);
        CHECK_STR(s.value[0], "{\"a\":1}");
        tly_pack_free(p);
        p = NULL;
        sent_free(&s);
    }
end:
    tly_pack_free(p);
    sent_free(&s);
}

/* Batch size 3, seven records: a message when the third and the sixth arrive,
 * each keyed by its first record; finish sends the seventh alone, and a second
 * finish sends nothing. */
static void test_pack_boundaries(void)
{
    struct sent s;
    tly_pack *p = NULL;
    const char *keys[] = {"A", "B", "C", "D", "E", "F", "G"};
    const char *values[] = {"1", "{\"x\":2}", "\"three\"", "4", "5", "6", "[7]"};

    sent_init(&s);
    CHECK((p = tly_pack_new(3, collect, &s)) != NULL);
    for (int i = 0; i < 7; i++) {
        CHECK_INT(add(p, keys[i], values[i]), 0);
        /* a message goes out on the add that fills the pack, not before */
        CHECK_MSG(s.count == (i + 1) / 3, "after record %d: %d messages", i + 1, s.count);
        CHECK_INT(tly_pack_records(p), i + 1);
        CHECK_INT(tly_pack_messages(p), (i + 1) / 3);
    }
    CHECK_STR(s.key[0], "A");
    CHECK_STR(s.value[0], "[1,{\"x\":2},\"three\"]");
    CHECK_INT(s.value_len[0], strlen("[1,{\"x\":2},\"three\"]"));
    CHECK_STR(s.key[1], "D");
    CHECK_STR(s.value[1], "[4,5,6]");
    CHECK_INT(tly_pack_finish(p), 0);
    CHECK_INT(s.count, 3);
    CHECK_STR(s.key[2], "G");
    CHECK_STR(s.value[2], "[[7]]"); /* a last, shorter message is still an array */
    CHECK_INT(tly_pack_messages(p), 3);
    CHECK_INT(tly_pack_records(p), 7);
    CHECK_INT(tly_pack_finish(p), 0);
    CHECK_INT(s.count, 3);
    CHECK_INT(tly_pack_messages(p), 3);
end:
    tly_pack_free(p);
    sent_free(&s);
}

/* A record count that fills the last pack exactly leaves finish nothing; with
 * no record at all, finish sends nothing either (no "[]" message). */
static void test_exact_multiple_and_empty(void)
{
    struct sent s;
    tly_pack *p = NULL;

    sent_init(&s);
    CHECK((p = tly_pack_new(2, collect, &s)) != NULL);
    CHECK_INT(tly_pack_finish(p), 0);
    CHECK_INT(s.count, 0);
    CHECK_INT(tly_pack_messages(p), 0);
    for (int i = 0; i < 4; i++)
        CHECK_INT(add(p, "k", "0"), 0);
    CHECK_INT(s.count, 2);
    CHECK_INT(tly_pack_finish(p), 0);
    CHECK_INT(s.count, 2);
    CHECK_STR(s.value[0], "[0,0]");
    CHECK_STR(s.value[1], "[0,0]");
end:
    tly_pack_free(p);
    sent_free(&s);
}

/* A message's key is its first record's whole key: a long key followed by a
 * shorter one leaves no bytes of the longer behind, and keys of the other
 * records do not count. */
static void test_key_is_first_records(void)
{
    struct sent s;
    tly_pack *p = NULL;

    sent_init(&s);
    CHECK((p = tly_pack_new(2, collect, &s)) != NULL);
    CHECK_INT(add(p, "LONG-KEY-0001", "1"), 0);
    CHECK_INT(add(p, "x", "2"), 0);
    CHECK_INT(add(p, "k", "3"), 0);
    CHECK_INT(add(p, "LONG-KEY-0004", "4"), 0);
    CHECK_INT(s.count, 2);
    CHECK_STR(s.key[0], "LONG-KEY-0001");
    CHECK_INT(s.key_len[0], 13);
    CHECK_STR(s.key[1], "k");
    CHECK_INT(s.key_len[1], 1);
    CHECK_STR(s.value[1], "[3,4]");
end:
    tly_pack_free(p);
    sent_free(&s);
}

/* Records larger than the pack's first buffer: the message still holds every
 * byte of each, in order. */
static void test_large_records(void)
{
    struct sent s;
    tly_pack *p = NULL;
    char *records[3] = {NULL, NULL, NULL};
    size_t size = 3000;

    sent_init(&s);
    for (int i = 0; i < 3; i++) {
        CHECK((records[i] = malloc(size + 1)) != NULL);
        memset(records[i], 'a' + i, size);
        records[i][size] = '\0';
    }
    CHECK((p = tly_pack_new(3, collect, &s)) != NULL);
    for (int i = 0; i < 3; i++)
        CHECK_INT(add(p, "big", records[i]), 0);
    CHECK_INT(s.count, 1);
    CHECK_INT(s.value_len[0], 3 * size + 4); /* "[" + 2 "," + "]" */
    CHECK(s.value[0][0] == '[' && s.value[0][3 * size + 3] == ']');
    for (int i = 0; i < 3; i++) {
        const char *at = s.value[0] + 1 + (size_t)i * (size + 1);
        CHECK_MSG(memcmp(at, records[i], size) == 0, "record %d differs", i);
        if (i < 2)
            CHECK(at[size] == ',');
    }
end:
    for (int i = 0; i < 3; i++)
        free(records[i]);
    tly_pack_free(p);
    sent_free(&s);
}

/* Reset (a new transaction) forgets a half-filled pack and the counts, and
 * sends to the new context from then on. */
static void test_reset(void)
{
    struct sent first, second;
    tly_pack *p = NULL;

    sent_init(&first);
    sent_init(&second);
    CHECK((p = tly_pack_new(3, collect, &first)) != NULL);
    for (int i = 0; i < 5; i++)
        CHECK_INT(add(p, "old", "0"), 0);
    CHECK_INT(first.count, 1);
    tly_pack_reset(p, &second);
    CHECK_INT(tly_pack_records(p), 0);
    CHECK_INT(tly_pack_messages(p), 0);
    CHECK_INT(add(p, "new", "1"), 0);
    CHECK_INT(tly_pack_finish(p), 0);
    CHECK_INT(first.count, 1); /* the two buffered "old" records were dropped */
    CHECK_INT(second.count, 1);
    CHECK_STR(second.key[0], "new");
    CHECK_STR(second.value[0], "[1]");
    CHECK_INT(tly_pack_records(p), 1);
    CHECK_INT(tly_pack_messages(p), 1);
end:
    tly_pack_free(p);
    sent_free(&first);
    sent_free(&second);
}

/* A send that fails: its value comes back from tly_pack_add (or finish), and
 * the message is not counted as sent. */
static void test_send_fails(void)
{
    struct sent s;
    tly_pack *p = NULL;

    sent_init(&s);
    s.fail_at = 0;
    CHECK((p = tly_pack_new(2, collect, &s)) != NULL);
    CHECK_INT(add(p, "a", "1"), 0);
    CHECK_INT(add(p, "b", "2"), 7);
    CHECK_INT(tly_pack_messages(p), 0);
    CHECK_INT(tly_pack_records(p), 2);
    CHECK_INT(add(p, "c", "3"), 0);
    s.fail_at = 1;
    CHECK_INT(tly_pack_finish(p), 7);
    CHECK_INT(tly_pack_messages(p), 0);
    CHECK_INT(s.count, 0);
    tly_pack_free(p);

    /* the same with batch size 1, where tly_pack_add sends directly */
    sent_init(&s);
    s.fail_at = 1;
    CHECK((p = tly_pack_new(1, collect, &s)) != NULL);
    CHECK_INT(add(p, "a", "1"), 0);
    CHECK_INT(add(p, "b", "2"), 7);
    CHECK_INT(add(p, "c", "3"), 0);
    CHECK_INT(tly_pack_records(p), 3);
    CHECK_INT(tly_pack_messages(p), 2);
    CHECK_STR(s.key[1], "c");
end:
    tly_pack_free(p);
    sent_free(&s);
}

static const tly_testcase cases[] = {{"batch_size_one", test_batch_size_one},
                                     {"batch_size_below_one", test_batch_size_below_one},
                                     {"pack_boundaries", test_pack_boundaries},
                                     {"exact_multiple_and_empty", test_exact_multiple_and_empty},
                                     {"key_is_first_records", test_key_is_first_records},
                                     {"large_records", test_large_records},
                                     {"reset", test_reset},
                                     {"send_fails", test_send_fails},
                                     {NULL, NULL}};

int main(int argc, char **argv)
{
    return tly_test_main(argc, argv, cases);
}
