/* adapters/kafka/ownership.h - which input partitions this instance owns, as
 * one state machine per partition.
 *
 *                +------------- assigned ------------+
 *                |                                    v
 *   UNASSIGNED --+-- assigned_wait --> PENDING --taken--> HELD
 *    ^  ^    |                          |    |            |  |
 *    |  |    | restored                 |    +------------+--+-- consumer_restart,
 *    |  |    v                          |                 |      kept (HELD only)
 *    |  |  STANDBY <-------------------------------------------+
 *    |  |    |  assigned, assigned_wait: as from UNASSIGNED
 *    |  +----+ not_assigned             |                 |
 *    +------------------ revoked -------+-----------------+
 *
 * UNASSIGNED  not assigned here; the database holds nothing of it that counts.
 * STANDBY     not assigned, but its rows are here and right as of the changelog
 *             offset recorded for them: left from before a restart or a rebuild
 *             ("restored"), or kept when the assignment went away without a
 *             drop ("kept": a shutdown, a replaced consumer, the changelog off).
 *             An assignment soon after only replays the tail; once the group
 *             has left the assignment alone for a while they are dropped
 *             ("not_assigned").
 * PENDING     assigned, paused: a previous owner's transaction is still open
 *             (the committed offsets are not stable yet, or the changelog hides
 *             an open transaction), so it cannot be taken over yet.
 * HELD        assigned and taken over: its state is up to date, its events are
 *             consumed.
 *
 * Transitions (reason -> from => to):
 *   assigned          UNASSIGNED|STANDBY => HELD      taken over in the rebalance
 *   assigned_wait     UNASSIGNED|STANDBY => PENDING   assigned paused
 *   taken             PENDING => HELD                 taken over between polls
 *   revoked           HELD|PENDING => UNASSIGNED      rows dropped (the new owner
 *                                                     rebuilds them)
 *   kept              HELD => STANDBY                 revoked, rows kept
 *   consumer_restart  HELD|PENDING => STANDBY         the watchdog replaced the
 *                                                     consumer
 *   restored          UNASSIGNED => STANDBY           rows found at start
 *   not_assigned      STANDBY => UNASSIGNED           the standby rows dropped
 * Anything else is a bug: tly_ownership_set refuses it and says so.
 *
 * Pure bookkeeping (no librdkafka, no SQLite): the runner's assignment code
 * (assignment.c) does the work and records each step here. */
#ifndef TLY_OWNERSHIP_H
#define TLY_OWNERSHIP_H

#include <stddef.h>
#include <stdint.h>

#include "meta.h" /* TLY_MAX_PARTITIONS */

typedef enum {
    TLY_PART_UNASSIGNED = 0,
    TLY_PART_STANDBY,
    TLY_PART_PENDING,
    TLY_PART_HELD,
} tly_part_state;

typedef enum {
    TLY_PART_ASSIGNED = 0,
    TLY_PART_ASSIGNED_WAIT,
    TLY_PART_TAKEN,
    TLY_PART_REVOKED,
    TLY_PART_KEPT,
    TLY_PART_CONSUMER_RESTART,
    TLY_PART_RESTORED,
    TLY_PART_NOT_ASSIGNED,
} tly_part_event;

typedef struct tly_ownership tly_ownership;

/* All partitions UNASSIGNED. NULL when out of memory. */
tly_ownership *tly_ownership_new(void);
void tly_ownership_free(tly_ownership *o);

/* Moves partition p by `event` at time now_ms (monotonic). Returns 0, or -1
 * with errbuf when p is out of range or the event is not valid in p's state
 * (nothing changes then). Each transition is logged at debug level
 * (event=partition_state partition= from= to= reason=). */
int tly_ownership_apply(tly_ownership *o, int p, tly_part_event event, int64_t now_ms, char *errbuf,
                        size_t errlen);

/* p's state (UNASSIGNED for p out of range) and since when (monotonic ms, 0
 * when never changed). */
tly_part_state tly_ownership_state(const tly_ownership *o, int p);
int64_t tly_ownership_since(const tly_ownership *o, int p);

/* How many partitions are in state s; the earliest `since` among them (0 when
 * none). */
int tly_ownership_count(const tly_ownership *o, tly_part_state s);
int64_t tly_ownership_oldest(const tly_ownership *o, tly_part_state s);

/* The state a transition leads to from `from`, or -1 when `event` is not
 * valid there: the transition table, for tests and for the checks above. */
int tly_ownership_next(tly_part_state from, tly_part_event event);

/* "unassigned", "standby", ... and "assigned", "assigned_wait", ... */
const char *tly_part_state_name(tly_part_state s);
const char *tly_part_event_name(tly_part_event e);

#endif
