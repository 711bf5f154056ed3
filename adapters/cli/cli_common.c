/* adapters/cli/cli_common.c - usage errors, flag values, progress, logfmt. */
#include "cli_common.h"
#include "clock.h"

#include "duration.h"
#include "kconf.h"
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int cli_usage_error(const char *command, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "tally %s: ", command);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nRun 'tally %s --help' for usage.\n", command);
    return CLI_EXIT_USAGE;
}

int cli_bad_option(const char *command, int opt, char **argv, int optind_now)
{
    const char *arg = argv[optind_now - 1];
    if (opt == ':')
        return cli_usage_error(command, "option %s needs a value", arg);
    return cli_usage_error(command, "unknown option %s", arg);
}

int cli_parse_duration_ms(const char *command, const char *flag, const char *value, int64_t *out)
{
    char err[256];
    if (tly_duration_parse_ms(value, out, err, sizeof(err)) < 0) {
        cli_usage_error(command, "%s: %s", flag, err);
        return -1;
    }
    return 0;
}

int cli_parse_int64(const char *command, const char *flag, const char *value, int64_t min,
                    int64_t max, int64_t *out)
{
    char *end;
    long long n;
    errno = 0;
    n = strtoll(value, &end, 10);
    if (errno || end == value || *end || n < min || n > max) {
        cli_usage_error(command, "%s must be an integer between %lld and %lld, not \"%s\"", flag,
                        (long long)min, (long long)max, value);
        return -1;
    }
    *out = n;
    return 0;
}

int cli_kafka_option(const char *command, int opt, const char *value)
{
    char err[1024];
    int rc = opt == 'X' ? tly_kconf_add(value, "-X", err, sizeof(err))
                        : tly_kconf_add_file(value, err, sizeof(err));
    return rc < 0 ? cli_usage_error(command, "%s", err) : 0;
}

int cli_kafka_settings(const char *command, const char **brokers)
{
    char err[1024];
    if (tly_kconf_add_env(err, sizeof(err)) < 0)
        return cli_usage_error(command, "%s", err);
    if (*brokers && !**brokers)
        return cli_usage_error(command,
                               "--brokers must not be empty, e.g. --brokers 127.0.0.1:9092");
    if (!(*brokers = tly_kconf_brokers(*brokers)))
        return cli_usage_error(command, "--brokers is required (or set KAFKA_BROKERS, or "
                                        "bootstrap.servers in --kafka-config), e.g. "
                                        "--brokers 127.0.0.1:9092");
    return 0;
}

void cli_progress_init(cli_progress *p, const char *what)
{
    p->enabled = isatty(STDERR_FILENO);
    p->what = what;
    p->start_ms = p->last_ms = tly_clock_mono_ms();
}

void cli_progress_tick(cli_progress *p, int64_t rows)
{
    int64_t now;
    if (!p->enabled)
        return;
    now = tly_clock_mono_ms();
    if (now - p->last_ms < 1000)
        return;
    p->last_ms = now;
    fprintf(stderr, "\r%s: %lld rows, %.0f rows/s   ", p->what, (long long)rows,
            rows * 1000.0 / (double)(now - p->start_ms > 0 ? now - p->start_ms : 1));
}

void cli_progress_done(cli_progress *p)
{
    if (p->enabled && p->last_ms != p->start_ms)
        fputc('\n', stderr);
}

const char *cli_quote(const char *value, char *buf, size_t buflen)
{
    return tly_log_quote(value, buf, buflen);
}

void cli_log(const char *level, const char *event, const char *fmt, ...)
{
    char rest[1800];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rest, sizeof(rest), fmt, ap);
    va_end(ap);
    tly_log(level, event, "%s", rest);
}
