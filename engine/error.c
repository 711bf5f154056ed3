/* engine/error.c - error messages into the caller's buffer. */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>

int tly_error(char *errbuf, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    if (errbuf && errlen) {
        va_start(ap, fmt);
        vsnprintf(errbuf, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}
