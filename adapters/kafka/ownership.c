/* adapters/kafka/ownership.c - see ownership.h (the diagram and the table). */
#include "ownership.h"
#include "error.h"
#include "log.h"

#include <stdlib.h>

#define N_STATES 4

struct tly_ownership {
    tly_part_state state[TLY_MAX_PARTITIONS];
    int64_t since[TLY_MAX_PARTITIONS];
    int count[4]; /* partitions per state: asked before every poll */
};

#define N_EVENTS 8
#define NO (-1)

/* next[event][from]: the state `event` leads to from `from`, or NO. */
// clang-format off
static const int next[N_EVENTS][N_STATES] = {
    /*                          UNASSIGNED           STANDBY              PENDING          HELD */
    [TLY_PART_ASSIGNED]         = {TLY_PART_HELD,    TLY_PART_HELD,       NO,              NO},
    [TLY_PART_ASSIGNED_WAIT]    = {TLY_PART_PENDING, TLY_PART_PENDING,    NO,              NO},
    [TLY_PART_TAKEN]            = {NO,               NO,                  TLY_PART_HELD,   NO},
    [TLY_PART_REVOKED]          = {NO,               NO,                  TLY_PART_UNASSIGNED, TLY_PART_UNASSIGNED},
    [TLY_PART_KEPT]             = {NO,               NO,                  NO,              TLY_PART_STANDBY},
    [TLY_PART_CONSUMER_RESTART] = {NO,               NO,                  TLY_PART_STANDBY, TLY_PART_STANDBY},
    [TLY_PART_RESTORED]         = {TLY_PART_STANDBY, NO,                  NO,              NO},
    [TLY_PART_NOT_ASSIGNED]     = {NO,               TLY_PART_UNASSIGNED, NO,              NO},
};
// clang-format on

static const char *const state_names[N_STATES] = {"unassigned", "standby", "pending", "held"};
static const char *const event_names[N_EVENTS] = {"assigned", "assigned_wait", "taken",
                                                  "revoked",  "kept",          "consumer_restart",
                                                  "restored", "not_assigned"};

const char *tly_part_state_name(tly_part_state s)
{
    return (int)s >= 0 && s < N_STATES ? state_names[s] : "?";
}

const char *tly_part_event_name(tly_part_event e)
{
    return (int)e >= 0 && e < N_EVENTS ? event_names[e] : "?";
}

int tly_ownership_next(tly_part_state from, tly_part_event event)
{
    if ((int)from < 0 || from >= N_STATES || (int)event < 0 || event >= N_EVENTS)
        return NO;
    return next[event][from];
}

tly_ownership *tly_ownership_new(void)
{
    tly_ownership *o = calloc(1, sizeof(tly_ownership));
    if (o)
        o->count[TLY_PART_UNASSIGNED] = TLY_MAX_PARTITIONS;
    return o;
}

void tly_ownership_free(tly_ownership *o)
{
    free(o);
}

int tly_ownership_apply(tly_ownership *o, int p, tly_part_event event, int64_t now_ms, char *errbuf,
                        size_t errlen)
{
    int to;
    if (p < 0 || p >= TLY_MAX_PARTITIONS)
        return tly_error(errbuf, errlen, "partition %d: at most %d partitions are supported", p,
                         TLY_MAX_PARTITIONS);
    if ((to = tly_ownership_next(o->state[p], event)) == NO)
        return tly_error(errbuf, errlen, "partition %d: %s is not a valid step from %s", p,
                         tly_part_event_name(event), tly_part_state_name(o->state[p]));
    tly_log("debug", "partition_state", "partition=%d from=%s to=%s reason=%s", p,
            tly_part_state_name(o->state[p]), tly_part_state_name((tly_part_state)to),
            tly_part_event_name(event));
    o->count[o->state[p]]--;
    o->count[to]++;
    o->state[p] = (tly_part_state)to;
    o->since[p] = now_ms;
    return 0;
}

tly_part_state tly_ownership_state(const tly_ownership *o, int p)
{
    return p >= 0 && p < TLY_MAX_PARTITIONS ? o->state[p] : TLY_PART_UNASSIGNED;
}

int64_t tly_ownership_since(const tly_ownership *o, int p)
{
    return p >= 0 && p < TLY_MAX_PARTITIONS ? o->since[p] : 0;
}

int tly_ownership_count(const tly_ownership *o, tly_part_state s)
{
    return (int)s >= 0 && s < N_STATES ? o->count[s] : 0;
}

int64_t tly_ownership_oldest(const tly_ownership *o, tly_part_state s)
{
    int64_t oldest = 0;
    for (int p = 0; p < TLY_MAX_PARTITIONS; p++)
        if (o->state[p] == s && (oldest == 0 || o->since[p] < oldest))
            oldest = o->since[p];
    return oldest;
}
