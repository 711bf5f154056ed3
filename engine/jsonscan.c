/* engine/jsonscan.c - a small, strict JSON reader; see jsonscan.h.
 *
 * The grammar is RFC 8259's, minus what jsonscan.h lists as declined. Every
 * check reads only inside [text, text + len): the input is not NUL-terminated. */
#include "jsonscan.h"

#include <stdlib.h>
#include <string.h>

struct tly_jsonscan {
    tly_jnode *nodes;
    int count, cap;
    char *arena; /* unescaped strings and number texts, NUL-terminated */
    size_t arena_len, arena_cap;
    const char *end;
    size_t spaces; /* whitespace runs skipped so far: a container that saw one is
                      not printed as written */
};

tly_jsonscan *tly_jsonscan_new(void)
{
    return calloc(1, sizeof(tly_jsonscan));
}

void tly_jsonscan_free(tly_jsonscan *s)
{
    if (!s)
        return;
    free(s->nodes);
    free(s->arena);
    free(s);
}

const tly_jnode *tly_jsonscan_node(const tly_jsonscan *s, int index)
{
    return &s->nodes[index];
}

static int new_node(tly_jsonscan *s, tly_jtype type, const char *raw)
{
    tly_jnode *n;
    if (s->count == s->cap) {
        int cap = s->cap ? s->cap * 2 : 256;
        tly_jnode *nodes = realloc(s->nodes, (size_t)cap * sizeof(*nodes));
        if (!nodes)
            return -1;
        s->nodes = nodes;
        s->cap = cap;
    }
    n = &s->nodes[s->count];
    n->raw = raw;
    n->key = NULL;
    n->raw_len = n->key_len = 0;
    n->child = n->next = n->text = -1;
    n->type = (uint8_t)type;
    n->flags = TLY_JNODE_CANONICAL;
    n->b = false;
    n->i = 0;
    return s->count++;
}

static const char *skip_space(tly_jsonscan *s, const char *p)
{
    if (p < s->end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) {
        s->spaces++;
        do
            p++;
        while (p < s->end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'));
    }
    return p;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The code point of the 4 hex digits at p (p + 4 <= end checked), or -1. */
static long hex4(const char *p)
{
    long cp = 0;
    for (int k = 0; k < 4; k++) {
        int h = hex_value(p[k]);
        if (h < 0)
            return -1;
        cp = cp * 16 + h;
    }
    return cp;
}

/* Scans a string from its opening quote; returns the byte after the closing
 * quote, or NULL. Sets the escape flags of node n. */
static const char *scan_string(tly_jsonscan *s, const char *p, uint8_t *flags)
{
    const char *end = s->end;
    for (p++; p < end; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"')
            return p + 1;
        if (c < 0x20)
            return NULL; /* json-c takes these raw; rare enough to leave to it */
        if (c != '\\')
            continue;
        if (++p >= end)
            return NULL;
        *flags |= TLY_JNODE_ESCAPED;
        switch (*p) {
        case '"':
        case '\\':
        case 'b':
        case 'f':
        case 'n':
        case 'r':
        case 't': break; /* json-c prints these back the same way */
        case '/': *flags &= (uint8_t)~TLY_JNODE_CANONICAL; break; /* printed as "/" */
        case 'u': {
            long cp;
            if (end - p < 5 || (cp = hex4(p + 1)) < 0)
                return NULL;
            /* NUL would cut json-c's C strings; surrogates have rules of their own */
            if (cp == 0 || (cp >= 0xd800 && cp <= 0xdfff))
                return NULL;
            *flags &= (uint8_t)~TLY_JNODE_CANONICAL; /* printed as the character */
            p += 4;
            break;
        }
        default: return NULL;
        }
    }
    return NULL;
}

static const char *scan_digits(const char *p, const char *end)
{
    while (p < end && *p >= '0' && *p <= '9')
        p++;
    return p;
}

/* Scans a number into node n; returns the byte after it, or NULL. */
static const char *scan_number(tly_jsonscan *s, const char *p, tly_jnode *n)
{
    const char *end = s->end, *start = p, *digits;
    bool negative = false, is_double = false;
    if (*p == '-') {
        negative = true;
        p++;
    }
    digits = p;
    if (p >= end || *p < '0' || *p > '9')
        return NULL;
    if (*p == '0')
        p++;
    else
        p = scan_digits(p, end);
    if (p < end && *p == '.') {
        const char *f = ++p;
        if ((p = scan_digits(p, end)) == f)
            return NULL;
        is_double = true;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        const char *x;
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        x = p;
        if ((p = scan_digits(p, end)) == x)
            return NULL;
        is_double = true;
    }
    n->raw_len = (uint32_t)(p - start);
    if (is_double) {
        n->type = TLY_J_DOUBLE; /* json-c keeps a double's text as written */
        return p;
    }
    /* json-c prints an integer from its value: "-0" comes back as "0", and
     * beyond int64 it saturates (or goes unsigned) */
    if (negative && p - digits == 1 && *digits == '0')
        return NULL;
    {
        uint64_t v = 0, limit = negative ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
        for (const char *d = digits; d < p; d++) {
            unsigned digit = (unsigned)(*d - '0');
            if (v > (limit - digit) / 10)
                return NULL;
            v = v * 10 + digit;
        }
        n->i = negative ? (v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v) : (int64_t)v;
    }
    return p;
}

static bool same_key(const tly_jnode *a, const tly_jnode *b)
{
    return a->key_len == b->key_len && memcmp(a->key, b->key, a->key_len) == 0;
}

/* Whether object node `object` (of n members) names a member twice: json-c
 * keeps the last value at the first one's place, which is left to it. */
static bool has_duplicates(const tly_jsonscan *s, int object, int n)
{
    int32_t slots[2 * TLY_JSONSCAN_MAX_MEMBERS];
    if (n <= 8) {
        for (int a = s->nodes[object].child; a >= 0; a = s->nodes[a].next)
            for (int b = s->nodes[a].next; b >= 0; b = s->nodes[b].next)
                if (same_key(&s->nodes[a], &s->nodes[b]))
                    return true;
        return false;
    }
    memset(slots, 0xff, sizeof(slots));
    for (int a = s->nodes[object].child; a >= 0; a = s->nodes[a].next) {
        const tly_jnode *m = &s->nodes[a];
        uint32_t h = 2166136261u;
        for (uint32_t k = 0; k < m->key_len; k++)
            h = (h ^ (unsigned char)m->key[k]) * 16777619u;
        for (h %= 2 * TLY_JSONSCAN_MAX_MEMBERS; slots[h] >= 0;
             h = (h + 1) % (2 * TLY_JSONSCAN_MAX_MEMBERS))
            if (same_key(&s->nodes[slots[h]], m))
                return true;
        slots[h] = a;
    }
    return false;
}

static const char *scan_value(tly_jsonscan *s, const char *p, int depth, int *index);

/* Scans an object or array from its opening bracket into node `index`. */
static const char *scan_container(tly_jsonscan *s, const char *p, int depth, int index)
{
    bool object = *p == '{';
    char close = object ? '}' : ']';
    size_t spaces = s->spaces;
    int last = -1, members = 0;
    const char *start = p;

    if (depth >= TLY_JSONSCAN_MAX_DEPTH)
        return NULL;
    p = skip_space(s, p + 1);
    if (p < s->end && *p == close)
        goto closed;
    for (;;) {
        const char *key = NULL, *key_end = NULL;
        int child;
        if (object) {
            if (p >= s->end || *p != '"')
                return NULL;
            key = p + 1;
            for (key_end = key; key_end < s->end && *key_end != '"'; key_end++)
                if (*key_end == '\\' || (unsigned char)*key_end < 0x20)
                    return NULL; /* json-c would unescape the name: left to it */
            if (key_end >= s->end || ++members > TLY_JSONSCAN_MAX_MEMBERS)
                return NULL;
            p = skip_space(s, key_end + 1);
            if (p >= s->end || *p != ':')
                return NULL;
            p = skip_space(s, p + 1);
        }
        if (!(p = scan_value(s, p, depth + 1, &child)))
            return NULL;
        if (object) {
            s->nodes[child].key = key;
            s->nodes[child].key_len = (uint32_t)(key_end - key);
        }
        if (!(s->nodes[child].flags & TLY_JNODE_CANONICAL))
            s->nodes[index].flags &= (uint8_t)~TLY_JNODE_CANONICAL;
        if (last < 0)
            s->nodes[index].child = child;
        else
            s->nodes[last].next = child;
        last = child;
        p = skip_space(s, p);
        if (p < s->end && *p == ',') {
            p = skip_space(s, p + 1);
            continue;
        }
        if (p < s->end && *p == close)
            break;
        return NULL;
    }
closed:
    if (s->spaces != spaces)
        s->nodes[index].flags &= (uint8_t)~TLY_JNODE_CANONICAL;
    if (object && members > 1 && has_duplicates(s, index, members))
        return NULL;
    p++;
    s->nodes[index].raw_len = (uint32_t)(p - start);
    return p;
}

static const char *scan_literal(tly_jsonscan *s, const char *p, const char *word, size_t len)
{
    if ((size_t)(s->end - p) < len || memcmp(p, word, len) != 0)
        return NULL;
    return p + len;
}

/* Scans the value at p into a new node (*index); returns the byte after it,
 * or NULL when the reader declines. */
static const char *scan_value(tly_jsonscan *s, const char *p, int depth, int *index)
{
    int i;
    if (p >= s->end)
        return NULL;
    if ((i = new_node(s, TLY_J_NULL, p)) < 0)
        return NULL;
    *index = i;
    switch (*p) {
    case '{': s->nodes[i].type = TLY_J_OBJECT; return scan_container(s, p, depth, i);
    case '[': s->nodes[i].type = TLY_J_ARRAY; return scan_container(s, p, depth, i);
    case '"': {
        const char *after = scan_string(s, p, &s->nodes[i].flags);
        s->nodes[i].type = TLY_J_STRING;
        if (after)
            s->nodes[i].raw_len = (uint32_t)(after - p);
        return after;
    }
    case 't':
        s->nodes[i].type = TLY_J_BOOL;
        s->nodes[i].b = true;
        s->nodes[i].raw_len = 4;
        return scan_literal(s, p, "true", 4);
    case 'f':
        s->nodes[i].type = TLY_J_BOOL;
        s->nodes[i].raw_len = 5;
        return scan_literal(s, p, "false", 5);
    case 'n': s->nodes[i].raw_len = 4; return scan_literal(s, p, "null", 4);
    default:
        if (*p == '-' || (*p >= '0' && *p <= '9')) {
            s->nodes[i].type = TLY_J_INT;
            return scan_number(s, p, &s->nodes[i]);
        }
        return NULL;
    }
}

int tly_jsonscan_read(tly_jsonscan *s, const char *text, size_t len)
{
    const char *p;
    int root;
    size_t need;

    s->count = 0;
    s->arena_len = 0;
    s->spaces = 0;
    s->end = text + len;
    if (len > UINT32_MAX / 2)
        return -1;
    p = skip_space(s, text);
    if (p >= s->end || *p != '{')
        return -1;
    if (!(p = scan_value(s, p, 0, &root)))
        return -1;
    if (skip_space(s, p) != s->end)
        return -1;
    /* Every text the arena may be asked for fits in the input plus a NUL per
     * node; reserved now so that texts handed out never move. */
    need = len + (size_t)s->count + 1;
    if (need > s->arena_cap) {
        char *arena = realloc(s->arena, need);
        if (!arena)
            return -1;
        s->arena = arena;
        s->arena_cap = need;
    }
    return 0;
}

int tly_jsonscan_member(const tly_jsonscan *s, int object, const char *name)
{
    size_t len = strlen(name);
    if (s->nodes[object].type != TLY_J_OBJECT)
        return -1;
    for (int m = s->nodes[object].child; m >= 0; m = s->nodes[m].next)
        if (s->nodes[m].key_len == len && memcmp(s->nodes[m].key, name, len) == 0)
            return m;
    return -1;
}

/* Appends code point cp (not a surrogate, below 0x10000) as UTF-8. */
static char *put_utf8(char *out, long cp)
{
    if (cp < 0x80) {
        *out++ = (char)cp;
    } else if (cp < 0x800) {
        *out++ = (char)(0xc0 | (cp >> 6));
        *out++ = (char)(0x80 | (cp & 0x3f));
    } else {
        *out++ = (char)(0xe0 | (cp >> 12));
        *out++ = (char)(0x80 | ((cp >> 6) & 0x3f));
        *out++ = (char)(0x80 | (cp & 0x3f));
    }
    return out;
}

const char *tly_jsonscan_text(tly_jsonscan *s, int index, size_t *len)
{
    tly_jnode *n = &s->nodes[index];
    char *start, *out;

    /* only these fit the room tly_jsonscan_read reserved */
    if (n->type != TLY_J_STRING && n->type != TLY_J_INT && n->type != TLY_J_DOUBLE)
        return NULL;
    if (n->text < 0) {
        start = out = s->arena + s->arena_len;
        if (n->type != TLY_J_STRING) {
            memcpy(out, n->raw, n->raw_len);
            out += n->raw_len;
        } else if (!(n->flags & TLY_JNODE_ESCAPED)) {
            memcpy(out, n->raw + 1, n->raw_len - 2);
            out += n->raw_len - 2;
        } else {
            /* the escapes were checked by scan_string */
            for (const char *p = n->raw + 1, *end = n->raw + n->raw_len - 1; p < end; p++) {
                if (*p != '\\') {
                    *out++ = *p;
                    continue;
                }
                switch (*++p) {
                case 'b': *out++ = '\b'; break;
                case 'f': *out++ = '\f'; break;
                case 'n': *out++ = '\n'; break;
                case 'r': *out++ = '\r'; break;
                case 't': *out++ = '\t'; break;
                case 'u':
                    out = put_utf8(out, hex4(p + 1));
                    p += 4;
                    break;
                default: *out++ = *p; break; /* " \ / */
                }
            }
        }
        *out = '\0';
        n->text = (int32_t)(start - s->arena);
        s->arena_len += (size_t)(out - start) + 1;
    }
    *len = strlen(s->arena + n->text);
    return s->arena + n->text;
}
