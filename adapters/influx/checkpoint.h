/* adapters/influx/checkpoint.h - a durable position in time: the end of the last
 * range whose data is fully delivered, so a restart resumes right there.
 *
 * Written atomically (temporary file, fsync, rename, fsync of the directory):
 * after a crash the file holds either the old or the new position, never a
 * torn one. See checkpoint.c for the file's format. */
#ifndef TLY_CHECKPOINT_H
#define TLY_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

/* Reads the checkpoint at path. Returns 1 with *end_ms when the file holds
 * one, 0 when there is no file, -1 with errbuf when it cannot be read or is
 * not a checkpoint (never treated as "no file": resuming from a default would
 * skip or repeat data without saying so). */
int tly_checkpoint_read(const char *path, int64_t *end_ms, char *errbuf, size_t errlen);

/* Replaces the checkpoint at path with end_ms, durably. Returns 0, or -1 with
 * errbuf; after a failure the file holds the previous checkpoint, or the new
 * one when only the final fsync of the directory failed (then it may not
 * survive a power loss). */
int tly_checkpoint_write(const char *path, int64_t end_ms, char *errbuf, size_t errlen);

#endif
