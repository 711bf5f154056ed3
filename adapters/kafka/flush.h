/* adapters/kafka/flush.h - the flush-then-mark cycle: what a pipeline keeps
 * pending (its @flush section: telemetry's latest record per vehicle) goes
 * out, and is forgotten only once it is delivered.
 *
 *   1. read     tly_flush_read: the pending set up to seq `upto` (the
 *               store's last seq when the cycle starts, or when its read
 *               transaction starts), record by record into a pack (pack.h),
 *               in one read transaction
 *   2. deliver  the caller's: commit the Kafka transaction that holds the
 *               records (tally run --strategy log_compacted), or wait for
 *               every delivery report of an idempotent producer (tally
 *               publish); when anything was not delivered, stop here: the
 *               next cycle sends it all again
 *   3. mark     tly_flush_forget: forget what is pending up to `upto`
 *               (@flushed), in a write transaction of its own. A key changed
 *               again after the read stays pending (its mark is newer than
 *               upto).
 *
 * A crash between 2 and 3 sends the same latest records again at the next
 * cycle, which is harmless on a compacted topic; a crash before 2 sends
 * nothing. */
#ifndef TLY_FLUSH_H
#define TLY_FLUSH_H

#include "pack.h"
#include "pipeline.h"
#include "store.h"

#include <stddef.h>
#include <stdint.h>

/* *upto for tly_flush_read: the store's last seq, read inside the read
 * transaction, so that it is the last seq of the very snapshot the records
 * come from even while a writer on another connection goes on (tally
 * publish beside the daemon). */
#define TLY_FLUSH_LAST_SEQ (-1)

/* Step 1: resets pack (its send context becomes pack_ctx), adds every
 * pending record up to *upto (TLY_FLUSH_LAST_SEQ: *upto is set to the last
 * seq, see above), sends the last message. Returns 0, or -1 with err (a
 * database error, or a send that failed: the caller's context may know
 * why). */
int tly_flush_read(tly_store *store, tly_pipeline *pipeline, tly_pack *pack, void *pack_ctx,
                   int64_t *upto, char *err, size_t errlen);

/* Step 3. Returns 0, or -1 with err (rolled back: the records stay pending
 * and the next cycle repeats them). */
int tly_flush_forget(tly_store *store, tly_pipeline *pipeline, int64_t upto, char *err,
                     size_t errlen);

/* The cycle's log line: event=<event> flush_duration_ms= vin_count=
 * message_count= upto_seq=, from the pack's counts. */
void tly_flush_log(const char *event, int64_t started_ms, const tly_pack *pack, int64_t upto);

#endif
