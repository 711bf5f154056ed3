/* engine/jsonscan.h - a small, strict JSON reader for the common event.
 *
 * Reads one JSON object in place into a flat table of nodes (one per value,
 * in document order, linked parent -> first child -> next sibling), reused
 * from event to event, so that decoding an event allocates nothing once the
 * table has grown to the events' size. Strings are unescaped only when asked
 * for (tly_jsonscan_text).
 *
 * It accepts a subset of what json-c accepts in strict mode and gives the
 * same values for it; anything else (malformed or truncated text, a root that
 * is not an object, duplicate member names, a member name with an escape,
 * \u0000 or surrogate escapes, integers beyond int64 or "-0", raw control
 * characters, more than TLY_JSONSCAN_MAX_DEPTH levels, objects of more than
 * TLY_JSONSCAN_MAX_MEMBERS members) it declines, and the caller decodes that
 * event with json-c, which then gives the exact reason for a rejection. It
 * never rejects an event itself.
 *
 * Run tly_utf8_check on the text first: the reader does not validate UTF-8. */
#ifndef TLY_JSONSCAN_H
#define TLY_JSONSCAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TLY_JSONSCAN_MAX_DEPTH 32
#define TLY_JSONSCAN_MAX_MEMBERS 128

typedef struct tly_jsonscan tly_jsonscan;

typedef enum tly_jtype {
    TLY_J_NULL,
    TLY_J_BOOL,
    TLY_J_INT,
    TLY_J_DOUBLE,
    TLY_J_STRING,
    TLY_J_OBJECT,
    TLY_J_ARRAY
} tly_jtype;

/* The node's raw text is exactly what json-c prints for the value with
 * JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE: no whitespace
 * inside a container, no \/ or \u escape in a string. */
#define TLY_JNODE_CANONICAL 1
#define TLY_JNODE_ESCAPED 2 /* a string with at least one escape */

typedef struct tly_jnode {
    const char *raw; /* the value's text in the input (a string with its quotes) */
    const char *key; /* an object member's name in the input, without quotes */
    uint32_t raw_len, key_len;
    int32_t child; /* first child of an object or array, or -1 */
    int32_t next;  /* next member or element, or -1 */
    int32_t text;  /* offset of the unescaped text in the arena, or -1 */
    uint8_t type;  /* tly_jtype */
    uint8_t flags; /* TLY_JNODE_* */
    bool b;        /* TLY_J_BOOL */
    int64_t i;     /* TLY_J_INT */
} tly_jnode;

/* Returns a reader, or NULL when out of memory. */
tly_jsonscan *tly_jsonscan_new(void);
void tly_jsonscan_free(tly_jsonscan *s);

/* Reads text[0..len) (no NUL needed). Returns 0 when it was read and its root,
 * node 0, is an object; -1 when the reader declines it (see above) or is out
 * of memory. The nodes borrow the text, and live until the next read. */
int tly_jsonscan_read(tly_jsonscan *s, const char *text, size_t len);

const tly_jnode *tly_jsonscan_node(const tly_jsonscan *s, int index);

/* The member `name` (NUL-terminated) of object node `object`, or -1. */
int tly_jsonscan_member(const tly_jsonscan *s, int object, const char *name);

/* A string node's unescaped text, or a number's text as written,
 * NUL-terminated (neither can hold a NUL byte); *len is its length. Lives
 * until the next read. NULL for other nodes. */
const char *tly_jsonscan_text(tly_jsonscan *s, int index, size_t *len);

#endif
