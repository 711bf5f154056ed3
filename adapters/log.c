/* adapters/log.c - logfmt lines on stderr. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static const char *const levels[] = {"debug", "info", "warn", "error"};
static int min_level = 1;

static int level_index(const char *level)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(level, levels[i]) == 0)
            return i;
    return -1;
}

int tly_log_set_level(const char *level)
{
    int i = level_index(level);
    if (i < 0)
        return -1;
    min_level = i;
    return 0;
}

const char *tly_log_quote(const char *value, char *buf, size_t buflen)
{
    size_t n = 0;
    if (buflen < 3)
        return "\"\"";
    buf[n++] = '"';
    for (const char *s = value; *s && n + 3 < buflen; s++) {
        if (*s == '"' || *s == '\\')
            buf[n++] = '\\';
        buf[n++] = (*s == '\n' || *s == '\r') ? ' ' : *s;
    }
    buf[n++] = '"';
    buf[n] = '\0';
    return buf;
}

void tly_log(const char *level, const char *event, const char *fmt, ...)
{
    struct timespec ts;
    struct tm tm;
    char stamp[32], line[2048];
    int n;
    va_list ap;

    if (level_index(level) < min_level)
        return;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
    n = snprintf(line, sizeof(line), "ts=%s.%03ldZ level=%s event=%s ", stamp,
                 ts.tv_nsec / 1000000, level, event);
    if (n > 0 && (size_t)n < sizeof(line)) {
        va_start(ap, fmt);
        vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
        va_end(ap);
    }
    fprintf(stderr, "%s\n", line);
}
