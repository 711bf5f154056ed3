/* engine/members.h - the table-valued function tly_each: the members of the
 * event being staged, as rows.
 *
 * A pipeline with @each normally runs @stage once per member of the event's
 * object, binding the member's name and JSON text. A @stage whose statements
 * read the members instead,
 *
 *     INSERT INTO ... SELECT :vin, key, value, ... FROM tly_each(:each) ...
 *
 * runs once per event: :each is bound (sqlite3_bind_pointer) to the event's
 * member list, and tly_each yields one row (key TEXT, value TEXT) per member
 * in the event's order. Same rows in the same order as the per-member
 * statement, without a statement step, reset and six binds per member (a
 * telemetry event carries 30 readings). */
#ifndef TLY_MEMBERS_H
#define TLY_MEMBERS_H

#include <sqlite3.h>
#include <stddef.h>

/* The pointer type sqlite3_bind_pointer must name for tly_each's argument. */
#define TLY_MEMBERS_POINTER "tly_members"

/* One member of an event: both texts borrowed from the decoded event. */
typedef struct tly_member {
    const char *key;
    const char *value; /* the member's JSON text */
    int key_len, value_len;
} tly_member;

/* What :each points to while a statement runs. */
typedef struct tly_member_list {
    const tly_member *members;
    int count;
} tly_member_list;

/* Makes tly_each known to the connection (once: a second call finds it).
 * Returns 0, or -1 with the reason in errbuf. */
int tly_members_register(sqlite3 *db, char *errbuf, size_t errlen);

#endif
