/* adapters/kafka/pack.h - packs output records into messages (--batch-size).
 *
 * With a batch size of 1 every record is its own message, as the pipeline
 * made it. With N > 1, up to N records go into one message whose value is a
 * JSON array of the records' values, in order, and whose key is the first
 * record's key:
 *
 *     key   "VIN0001"
 *     value [{"data":{"id":"VIN0001",...},...},{"data":{"id":"VIN0002",...},...}]
 *
 * Fewer messages cost less on the network and on the broker; but a compacted
 * topic keeps one message per key, so packed messages do not belong on one
 * (the daemon refuses --batch-size > 1 with log_compacted). */
#ifndef TLY_PACK_H
#define TLY_PACK_H

#include <stddef.h>
#include <stdint.h>

typedef struct tly_pack tly_pack;

/* Sends one message; returns 0, or nonzero to stop (the error is the caller's
 * to keep). */
typedef int (*tly_pack_send_fn)(void *ctx, const char *key, size_t key_len, const char *value,
                                size_t value_len);

/* Returns NULL when out of memory. batch_size < 1 counts as 1. */
tly_pack *tly_pack_new(int batch_size, tly_pack_send_fn send, void *ctx);
void tly_pack_free(tly_pack *pack);

/* Adds one record; sends a message when the pack is full. Returns what send
 * returned (0 = go on), or -1 when out of memory. */
int tly_pack_add(tly_pack *pack, const char *key, size_t key_len, const char *value,
                 size_t value_len);

/* Sends what is left as a last, shorter message. Returns as tly_pack_add. */
int tly_pack_finish(tly_pack *pack);

/* Starts over for a new transaction: forgets what is buffered, zeroes the
 * counts, and sends to ctx from now on. */
void tly_pack_reset(tly_pack *pack, void *ctx);

/* Records added and messages sent since the last reset. */
int64_t tly_pack_records(const tly_pack *pack);
int64_t tly_pack_messages(const tly_pack *pack);

#endif
