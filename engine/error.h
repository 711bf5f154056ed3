/* engine/error.h - the one way tally reports an error: a message in the
 * caller's errbuf and -1 as the return value. */
#ifndef TLY_ERROR_H
#define TLY_ERROR_H

#include <stddef.h>

/* Formats a message into errbuf (if not NULL) and returns -1, so a failing
 * function can `return tly_error(errbuf, errlen, "...", ...)`. */
int tly_error(char *errbuf, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
