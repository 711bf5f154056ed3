/* tests/unit/test_ownership.c - the partition ownership state machine
 * (adapters/kafka/ownership.h): every transition by name, every invalid one
 * refused, the counts the daemon asks for before each poll. */
#include "tly_test.h"

#include "ownership.h"

/* One valid transition: from `from`, event leads to `to`; applied to a
 * partition that is in `from` it moves it there and stamps the time. */
static int step(tly_part_state from, tly_part_event event, tly_part_state to)
{
    tly_ownership *o = tly_ownership_new();
    char err[256];
    int ok = 0;
    /* walk partition 5 into `from` along valid steps */
    static const tly_part_event path[4][2] = {
        [TLY_PART_UNASSIGNED] = {-1, -1},
        [TLY_PART_STANDBY] = {TLY_PART_RESTORED, -1},
        [TLY_PART_PENDING] = {TLY_PART_ASSIGNED_WAIT, -1},
        [TLY_PART_HELD] = {TLY_PART_ASSIGNED, -1},
    };
    CHECK(o != NULL);
    for (int i = 0; i < 2 && (int)path[from][i] >= 0; i++)
        CHECK_MSG(tly_ownership_apply(o, 5, path[from][i], 10, err, sizeof(err)) == 0, "%s", err);
    CHECK_INT(tly_ownership_state(o, 5), from);
    CHECK_INT(tly_ownership_next(from, event), to);
    CHECK_MSG(tly_ownership_apply(o, 5, event, 20, err, sizeof(err)) == 0, "%s", err);
    CHECK_INT(tly_ownership_state(o, 5), to);
    CHECK_INT(tly_ownership_since(o, 5), 20);
    CHECK_INT(tly_ownership_count(o, to), to == TLY_PART_UNASSIGNED ? TLY_MAX_PARTITIONS : 1);
    CHECK_INT(tly_ownership_count(o, TLY_PART_UNASSIGNED),
              TLY_MAX_PARTITIONS - (to != TLY_PART_UNASSIGNED));
    ok = 1;
end:
    tly_ownership_free(o);
    return ok;
}

static void test_assigned(void)
{
    CHECK(step(TLY_PART_UNASSIGNED, TLY_PART_ASSIGNED, TLY_PART_HELD));
    CHECK(step(TLY_PART_STANDBY, TLY_PART_ASSIGNED, TLY_PART_HELD));
end:;
}

static void test_assigned_wait(void)
{
    CHECK(step(TLY_PART_UNASSIGNED, TLY_PART_ASSIGNED_WAIT, TLY_PART_PENDING));
    CHECK(step(TLY_PART_STANDBY, TLY_PART_ASSIGNED_WAIT, TLY_PART_PENDING));
end:;
}

static void test_taken(void)
{
    CHECK(step(TLY_PART_PENDING, TLY_PART_TAKEN, TLY_PART_HELD));
end:;
}

static void test_revoked(void)
{
    CHECK(step(TLY_PART_HELD, TLY_PART_REVOKED, TLY_PART_UNASSIGNED));
    CHECK(step(TLY_PART_PENDING, TLY_PART_REVOKED, TLY_PART_UNASSIGNED));
end:;
}

static void test_kept(void)
{
    CHECK(step(TLY_PART_HELD, TLY_PART_KEPT, TLY_PART_STANDBY));
end:;
}

/* the consumer watchdog replaced the consumer */
static void test_consumer_restart(void)
{
    CHECK(step(TLY_PART_HELD, TLY_PART_CONSUMER_RESTART, TLY_PART_STANDBY));
    CHECK(step(TLY_PART_PENDING, TLY_PART_CONSUMER_RESTART, TLY_PART_STANDBY));
end:;
}

static void test_restored(void)
{
    CHECK(step(TLY_PART_UNASSIGNED, TLY_PART_RESTORED, TLY_PART_STANDBY));
end:;
}

/* the standby drop of rows of partitions not assigned */
static void test_not_assigned(void)
{
    CHECK(step(TLY_PART_STANDBY, TLY_PART_NOT_ASSIGNED, TLY_PART_UNASSIGNED));
end:;
}

/* Exactly the 12 transitions above are valid; every other pair is refused
 * and leaves the partition where it was. */
static void test_invalid_refused(void)
{
    tly_ownership *o = tly_ownership_new();
    char err[256] = "";
    int valid = 0;

    for (int s = 0; s < 4; s++)
        for (int e = 0; e <= TLY_PART_NOT_ASSIGNED; e++)
            valid += tly_ownership_next((tly_part_state)s, (tly_part_event)e) >= 0;
    CHECK_INT(valid, 12);
    CHECK(o != NULL);
    CHECK(tly_ownership_apply(o, 1, TLY_PART_TAKEN, 1, err, sizeof(err)) < 0);
    CHECK(strstr(err, "taken is not a valid step from unassigned") != NULL);
    CHECK_INT(tly_ownership_state(o, 1), TLY_PART_UNASSIGNED);
    CHECK(tly_ownership_apply(o, 1, TLY_PART_ASSIGNED, 1, err, sizeof(err)) == 0);
    CHECK(tly_ownership_apply(o, 1, TLY_PART_ASSIGNED, 2, err, sizeof(err)) < 0);
    CHECK(tly_ownership_apply(o, 1, TLY_PART_NOT_ASSIGNED, 2, err, sizeof(err)) < 0);
    CHECK(tly_ownership_apply(o, 1, TLY_PART_RESTORED, 2, err, sizeof(err)) < 0);
    CHECK_INT(tly_ownership_state(o, 1), TLY_PART_HELD);
    CHECK_INT(tly_ownership_since(o, 1), 1);
    CHECK(tly_ownership_apply(o, TLY_MAX_PARTITIONS, TLY_PART_ASSIGNED, 1, err, sizeof(err)) < 0);
    CHECK(tly_ownership_apply(o, -1, TLY_PART_ASSIGNED, 1, err, sizeof(err)) < 0);
end:
    tly_ownership_free(o);
}

static void test_counts_and_oldest(void)
{
    tly_ownership *o = tly_ownership_new();
    char err[256];
    CHECK(o != NULL);
    CHECK_INT(tly_ownership_count(o, TLY_PART_PENDING), 0);
    CHECK_INT(tly_ownership_oldest(o, TLY_PART_PENDING), 0);
    CHECK(tly_ownership_apply(o, 3, TLY_PART_ASSIGNED_WAIT, 300, err, sizeof(err)) == 0);
    CHECK(tly_ownership_apply(o, 7, TLY_PART_ASSIGNED_WAIT, 200, err, sizeof(err)) == 0);
    CHECK(tly_ownership_apply(o, 9, TLY_PART_ASSIGNED, 100, err, sizeof(err)) == 0);
    CHECK_INT(tly_ownership_count(o, TLY_PART_PENDING), 2);
    CHECK_INT(tly_ownership_count(o, TLY_PART_HELD), 1);
    CHECK_INT(tly_ownership_count(o, TLY_PART_UNASSIGNED), TLY_MAX_PARTITIONS - 3);
    CHECK_INT(tly_ownership_oldest(o, TLY_PART_PENDING), 200);
    CHECK(tly_ownership_apply(o, 7, TLY_PART_TAKEN, 400, err, sizeof(err)) == 0);
    CHECK_INT(tly_ownership_oldest(o, TLY_PART_PENDING), 300);
    CHECK_STR(tly_part_state_name(TLY_PART_STANDBY), "standby");
    CHECK_STR(tly_part_event_name(TLY_PART_CONSUMER_RESTART), "consumer_restart");
end:
    tly_ownership_free(o);
}

static const tly_testcase cases[] = {{"assigned", test_assigned},
                                     {"assigned_wait", test_assigned_wait},
                                     {"taken", test_taken},
                                     {"revoked", test_revoked},
                                     {"kept", test_kept},
                                     {"consumer_restart", test_consumer_restart},
                                     {"restored", test_restored},
                                     {"not_assigned", test_not_assigned},
                                     {"invalid_refused", test_invalid_refused},
                                     {"counts_and_oldest", test_counts_and_oldest},
                                     {NULL, NULL}};

int main(int argc, char **argv)
{
    return tly_test_main(argc, argv, cases);
}
