/* adapters/common/clock.h - the two clocks the adapters read.
 *
 * Durations, deadlines and timeouts use the monotonic clock (a wall clock
 * stepped by NTP would stretch or cut them); anything compared with Kafka
 * record timestamps, written into a file or shown to a user uses the wall
 * clock. Both in milliseconds. */
#ifndef TLY_CLOCK_H
#define TLY_CLOCK_H

#include <stdint.h>

/* CLOCK_MONOTONIC, ms: only differences mean anything. */
int64_t tly_clock_mono_ms(void);

/* CLOCK_REALTIME, ms since the Unix epoch. */
int64_t tly_clock_wall_ms(void);

#endif
