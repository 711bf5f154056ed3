/* engine/utf8.h - strict UTF-8 validation (RFC 3629).
 *
 * Stricter than json-c's check: overlong forms, UTF-16 surrogates and code
 * points above U+10FFFF are invalid too, so no such byte sequence can reach the
 * state or be echoed as text. */
#ifndef TLY_UTF8_H
#define TLY_UTF8_H

#include <stddef.h>

/* Returns the offset of the first invalid byte, or len if all of s is valid. */
size_t tly_utf8_check(const char *s, size_t len);

#endif
