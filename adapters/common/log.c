/* adapters/common/log.c - one line per event on stderr, logfmt or JSON.
 *
 * Callers always format logfmt ("key=value key2=\"quoted value\""); in JSON
 * mode the line is rewritten into one object per line:
 *   {"ts":"2026-11-21T05:11:42.123Z","level":"info","event":"flush","vin_count":12}
 * Bare values that are plain decimal numbers become JSON numbers, everything
 * else a string. */
#include "log.h"
#include "clock.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const levels[] = {"debug", "info", "warn", "error"};
static int min_level = 1;
static int json_format;

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

int tly_log_set_format(const char *format)
{
    if (strcmp(format, "logfmt") == 0)
        json_format = 0;
    else if (strcmp(format, "json") == 0)
        json_format = 1;
    else
        return -1;
    return 0;
}

static void json_string(FILE *out, const char *s, size_t n)
{
    fputc('"', out);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            fprintf(out, "\\%c", c);
        else if (c < 0x20)
            fprintf(out, "\\u%04x", c);
        else
            fputc(c, out);
    }
    fputc('"', out);
}

static int is_number(const char *s, size_t n)
{
    size_t i = 0, digits = 0;
    if (i < n && s[i] == '-')
        i++;
    /* no leading zeros: "007" stays a string, as JSON wants */
    if (i + 1 < n && s[i] == '0' && s[i + 1] != '.')
        return 0;
    for (; i < n && s[i] >= '0' && s[i] <= '9'; i++)
        digits++;
    if (i < n && s[i] == '.') {
        size_t frac = 0;
        for (i++; i < n && s[i] >= '0' && s[i] <= '9'; i++)
            frac++;
        if (!frac)
            return 0;
    }
    return digits > 0 && i == n;
}

/* Writes the logfmt pairs of `rest` as JSON members (each preceded by ","). */
static void json_pairs(FILE *out, const char *rest)
{
    const char *p = rest;
    while (*p) {
        const char *key, *eq;
        while (*p == ' ')
            p++;
        if (!*p)
            break;
        key = p;
        while (*p && *p != '=' && *p != ' ')
            p++;
        eq = p;
        fputc(',', out);
        json_string(out, key, (size_t)(eq - key));
        fputc(':', out);
        if (*p != '=') { /* a bare word: true */
            fputs("true", out);
            continue;
        }
        p++;
        if (*p == '"') {
            /* quoted: unescape \" and \\ */
            char buf[2048];
            size_t n = 0;
            for (p++; *p && *p != '"'; p++) {
                if (*p == '\\' && p[1])
                    p++;
                if (n + 1 < sizeof(buf))
                    buf[n++] = *p;
            }
            if (*p == '"')
                p++;
            json_string(out, buf, n);
        } else {
            const char *v = p;
            while (*p && *p != ' ')
                p++;
            if (is_number(v, (size_t)(p - v)))
                fwrite(v, 1, (size_t)(p - v), out);
            else
                json_string(out, v, (size_t)(p - v));
        }
    }
}

int tly_log_limit_take(tly_log_limit *limit, int per_second, long long *suppressed)
{
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    struct timespec ts;
    int ok;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    pthread_mutex_lock(&lock);
    if (limit->second != (long long)ts.tv_sec) {
        limit->second = (long long)ts.tv_sec;
        limit->written = 0;
    }
    ok = limit->written < per_second;
    if (ok) {
        limit->written++;
        *suppressed = limit->suppressed;
        limit->suppressed = 0;
    } else {
        limit->suppressed++;
    }
    pthread_mutex_unlock(&lock);
    return ok;
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
    int64_t now;
    time_t seconds;
    struct tm tm;
    char stamp[32], line[2048];
    int n;
    va_list ap;

    if (level_index(level) < min_level)
        return;
    now = tly_clock_wall_ms();
    seconds = (time_t)(now / 1000);
    gmtime_r(&seconds, &tm);
    strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
    if (json_format) {
        char *text = NULL;
        size_t len = 0;
        FILE *out;
        va_start(ap, fmt);
        vsnprintf(line, sizeof(line), fmt, ap);
        va_end(ap);
        /* Built in memory and written with one call, so lines of two threads
         * never interleave. */
        if (!(out = open_memstream(&text, &len)))
            return;
        fprintf(out, "{\"ts\":\"%s.%03ldZ\",\"level\":", stamp, (long)(now % 1000));
        json_string(out, level, strlen(level));
        fputs(",\"event\":", out);
        json_string(out, event, strlen(event));
        json_pairs(out, line);
        fputs("}\n", out);
        if (fclose(out) == 0)
            fputs(text, stderr);
        free(text);
        return;
    }
    n = snprintf(line, sizeof(line), "ts=%s.%03ldZ level=%s event=%s ", stamp, (long)(now % 1000),
                 level, event);
    if (n > 0 && (size_t)n < sizeof(line)) {
        va_start(ap, fmt);
        vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
        va_end(ap);
    }
    fprintf(stderr, "%s\n", line);
}
