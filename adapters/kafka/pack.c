/* adapters/kafka/pack.c - packs output records into messages. See pack.h. */
#include "pack.h"

#include <stdlib.h>
#include <string.h>

struct tly_pack {
    int batch_size;
    tly_pack_send_fn send;
    void *ctx;
    char *key; /* the first record's key */
    size_t key_len, key_cap;
    char *value; /* "[" rec "," rec ... (the "]" is added when sent) */
    size_t value_len, value_cap;
    int count; /* records in the open pack */
    int64_t records, messages;
};

tly_pack *tly_pack_new(int batch_size, tly_pack_send_fn send, void *ctx)
{
    tly_pack *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->batch_size = batch_size < 1 ? 1 : batch_size;
    p->send = send;
    p->ctx = ctx;
    return p;
}

void tly_pack_free(tly_pack *p)
{
    if (!p)
        return;
    free(p->key);
    free(p->value);
    free(p);
}

/* Grows *buf to hold need bytes. */
static int reserve(char **buf, size_t *cap, size_t need)
{
    char *grown;
    size_t size = *cap ? *cap : 4096;
    if (need <= *cap)
        return 0;
    while (size < need)
        size *= 2;
    if (!(grown = realloc(*buf, size)))
        return -1;
    *buf = grown;
    *cap = size;
    return 0;
}

static int send_open(tly_pack *p)
{
    int rc;
    if (p->count == 0)
        return 0;
    p->value[p->value_len++] = ']'; /* room was reserved with the last record */
    rc = p->send(p->ctx, p->key, p->key_len, p->value, p->value_len);
    p->count = 0;
    p->value_len = 0;
    if (rc == 0)
        p->messages++;
    return rc;
}

int tly_pack_add(tly_pack *p, const char *key, size_t key_len, const char *value, size_t value_len)
{
    p->records++;
    if (p->batch_size == 1) {
        int rc = p->send(p->ctx, key, key_len, value, value_len);
        if (rc == 0)
            p->messages++;
        return rc;
    }
    if (p->count == 0) {
        if (reserve(&p->key, &p->key_cap, key_len + 1) < 0)
            return -1;
        if (key_len > 0) /* a NULL column is a NULL key of length 0 */
            memcpy(p->key, key, key_len);
        p->key[key_len] = '\0';
        p->key_len = key_len;
    }
    /* "[" or ",", the record, and room for the closing "]" */
    if (reserve(&p->value, &p->value_cap, p->value_len + value_len + 2) < 0)
        return -1;
    p->value[p->value_len++] = p->count == 0 ? '[' : ',';
    if (value_len > 0)
        memcpy(p->value + p->value_len, value, value_len);
    p->value_len += value_len;
    if (++p->count == p->batch_size)
        return send_open(p);
    return 0;
}

int tly_pack_finish(tly_pack *p)
{
    return send_open(p);
}

void tly_pack_reset(tly_pack *p, void *ctx)
{
    p->ctx = ctx;
    p->count = 0;
    p->value_len = 0;
    p->records = 0;
    p->messages = 0;
}

int64_t tly_pack_records(const tly_pack *p)
{
    return p->records;
}
int64_t tly_pack_messages(const tly_pack *p)
{
    return p->messages;
}
