/* tests/fuzz/fuzz_jsonscan.c - the fast event reader (engine/jsonscan.c)
 * against json-c. Any bytes are read without reading past them; what the
 * reader accepts (valid UTF-8 first, as the pipeline checks it) json-c must
 * accept too, read the way the pipeline reads an event (strict, whitespace
 * after the object allowed), with the same values: the same members in the
 * same order, the same integers, booleans and string texts, and for a node
 * flagged canonical the very text json-c prints. jsonscan.h promises all of
 * it: the pipeline takes either reader's values for the same event. */
#include "fuzz.h"

#include "jsonscan.h"
#include "utf8.h"

#include <json-c/json.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void compare(tly_jsonscan *scan, int index, json_object *value, const char *input,
                    size_t size)
{
    const tly_jnode *n = tly_jsonscan_node(scan, index);
    const char *printed;

    switch (n->type) {
    case TLY_J_NULL:
        FUZZ_ASSERT(value == NULL, "null vs %s in <%.*s>", json_object_to_json_string(value),
                    (int)size, input);
        return;
    case TLY_J_BOOL:
        FUZZ_ASSERT(json_object_is_type(value, json_type_boolean) &&
                        json_object_get_boolean(value) == n->b,
                    "bool in <%.*s>", (int)size, input);
        break;
    case TLY_J_INT:
        FUZZ_ASSERT(json_object_is_type(value, json_type_int) &&
                        json_object_get_int64(value) == n->i,
                    "int %lld vs %s in <%.*s>", (long long)n->i, json_object_to_json_string(value),
                    (int)size, input);
        break;
    case TLY_J_DOUBLE:
        FUZZ_ASSERT(json_object_is_type(value, json_type_double), "double in <%.*s>", (int)size,
                    input);
        break;
    case TLY_J_STRING: {
        size_t len;
        const char *text = tly_jsonscan_text(scan, index, &len);
        FUZZ_ASSERT(json_object_is_type(value, json_type_string) && text &&
                        (size_t)json_object_get_string_len(value) == len &&
                        memcmp(json_object_get_string(value), text, len) == 0,
                    "string <%.*s> in <%.*s>", (int)n->raw_len, n->raw, (int)size, input);
        break;
    }
    case TLY_J_OBJECT: {
        struct json_object_iterator it, end;
        int child = n->child;
        FUZZ_ASSERT(json_object_is_type(value, json_type_object), "object in <%.*s>", (int)size,
                    input);
        it = json_object_iter_begin(value);
        end = json_object_iter_end(value);
        for (; child >= 0; child = tly_jsonscan_node(scan, child)->next) {
            const tly_jnode *c = tly_jsonscan_node(scan, child);
            FUZZ_ASSERT(!json_object_iter_equal(&it, &end), "more members than json-c in <%.*s>",
                        (int)size, input);
            FUZZ_ASSERT(strlen(json_object_iter_peek_name(&it)) == c->key_len &&
                            memcmp(json_object_iter_peek_name(&it), c->key, c->key_len) == 0,
                        "member <%.*s> vs <%s> in <%.*s>", (int)c->key_len, c->key,
                        json_object_iter_peek_name(&it), (int)size, input);
            compare(scan, child, json_object_iter_peek_value(&it), input, size);
            json_object_iter_next(&it);
        }
        FUZZ_ASSERT(json_object_iter_equal(&it, &end), "fewer members than json-c in <%.*s>",
                    (int)size, input);
        break;
    }
    case TLY_J_ARRAY: {
        size_t i = 0;
        FUZZ_ASSERT(json_object_is_type(value, json_type_array), "array in <%.*s>", (int)size,
                    input);
        for (int child = n->child; child >= 0; child = tly_jsonscan_node(scan, child)->next, i++) {
            FUZZ_ASSERT(i < json_object_array_length(value), "more elements than json-c in <%.*s>",
                        (int)size, input);
            compare(scan, child, json_object_array_get_idx(value, i), input, size);
        }
        FUZZ_ASSERT(i == json_object_array_length(value), "fewer elements than json-c in <%.*s>",
                    (int)size, input);
        break;
    }
    default: FUZZ_ASSERT(0, "node type %d", n->type);
    }
    if (n->flags & TLY_JNODE_CANONICAL) {
        printed = json_object_to_json_string_ext(value, JSON_C_TO_STRING_PLAIN |
                                                            JSON_C_TO_STRING_NOSLASHESCAPE);
        FUZZ_ASSERT(strlen(printed) == n->raw_len && memcmp(printed, n->raw, n->raw_len) == 0,
                    "canonical <%.*s>, json-c prints <%s>, in <%.*s>", (int)n->raw_len, n->raw,
                    printed, (int)size, input);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static tly_jsonscan *scan;
    static json_tokener *tok;
    const char *input = (const char *)data;
    json_object *root;
    size_t end;
    bool whole = false;

    if (!scan && !(scan = tly_jsonscan_new()))
        abort();
    if (!tok) {
        if (!(tok = json_tokener_new_ex(64)))
            abort();
        json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
    }
    if (size > (1 << 20) || tly_utf8_check(input, size) != size ||
        tly_jsonscan_read(scan, input, size) != 0)
        return 0;
    /* read as engine/pipeline.c's parse_event reads an event */
    json_tokener_reset(tok);
    root = json_tokener_parse_ex(tok, input, (int)size);
    if (!root && json_tokener_get_error(tok) == json_tokener_continue) {
        root = json_tokener_parse_ex(tok, " ", 1);
        whole = true;
    }
    FUZZ_ASSERT(root, "the fast reader accepts <%.*s>, json-c does not: %s", (int)size, input,
                json_tokener_error_desc(json_tokener_get_error(tok)));
    for (end = whole ? size : json_tokener_get_parse_end(tok); end < size; end++)
        FUZZ_ASSERT(strchr(" \t\r\n", input[end]) && input[end] != '\0',
                    "the fast reader accepts <%.*s>, json-c finds data after the value", (int)size,
                    input);
    compare(scan, 0, root, input, size);
    json_object_put(root);
    return 0;
}
