/* adapters/kafka/flush.c - see flush.h. */
#include "flush.h"
#include "clock.h"
#include "error.h"
#include "log.h"

static int add_record(void *ctx, const char *key, size_t key_len, const char *value,
                      size_t value_len)
{
    return tly_pack_add(ctx, key, key_len, value, value_len);
}

int tly_flush_read(tly_store *store, tly_pipeline *pipeline, tly_pack *pack, void *pack_ctx,
                   int64_t *upto, char *err, size_t errlen)
{
    int rc;

    /* A read transaction (not BEGIN IMMEDIATE): a writer on another
     * connection goes on while the records go out. */
    if (tly_store_exec(store, "BEGIN", err, errlen) < 0)
        return -1;
    if (*upto == TLY_FLUSH_LAST_SEQ)
        *upto = tly_store_last_seq(store);
    tly_pack_reset(pack, pack_ctx);
    rc = tly_pipeline_flush(pipeline, *upto, add_record, pack, err, errlen);
    if (rc == 0 && tly_pack_finish(pack) != 0)
        rc = tly_error(err, errlen, "cannot produce a packed message");
    tly_store_exec(store, "COMMIT", (char[256]){0}, 256); /* a read: nothing to lose */
    return rc < 0 ? -1 : 0;
}

int tly_flush_forget(tly_store *store, tly_pipeline *pipeline, int64_t upto, char *err,
                     size_t errlen)
{
    if (tly_store_begin(store, err, errlen) < 0 ||
        tly_pipeline_flushed(pipeline, upto, err, errlen) < 0 ||
        tly_store_commit(store, err, errlen) < 0) {
        tly_store_rollback(store);
        return -1;
    }
    return 0;
}

void tly_flush_log(const char *event, int64_t started_ms, const tly_pack *pack, int64_t upto)
{
    tly_log("info", event, "flush_duration_ms=%lld vin_count=%lld message_count=%lld upto_seq=%lld",
            (long long)(tly_clock_mono_ms() - started_ms), (long long)tly_pack_records(pack),
            (long long)tly_pack_messages(pack), (long long)upto);
}
