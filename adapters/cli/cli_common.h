/* adapters/cli/cli_common.h - helpers shared by the tally subcommands: usage
 * errors, flag values, progress lines and logfmt logging. Only the CLI exits. */
#ifndef TLY_CLI_COMMON_H
#define TLY_CLI_COMMON_H

#include <stdint.h>
#include <stdio.h>

#define CLI_EXIT_OK 0
#define CLI_EXIT_FAILURE 1
#define CLI_EXIT_USAGE 2

/* Prints "tally CMD: <message>" and a hint to run --help on stderr; returns
 * CLI_EXIT_USAGE so callers can `return cli_usage_error(...)`. */
int cli_usage_error(const char *command, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Reports getopt_long's complaint about argv[optind - 1]; returns CLI_EXIT_USAGE. */
int cli_bad_option(const char *command, int opt, char **argv, int optind_now);

/* Parse a flag value; on failure print a usage error and return -1. */
int cli_parse_duration_ms(const char *command, const char *flag, const char *value, int64_t *out);
int cli_parse_int64(const char *command, const char *flag, const char *value, int64_t min,
                    int64_t max, int64_t *out);

/* -X NAME=VALUE and --kafka-config FILE, on every command that talks to
 * Kafka (adapters/kafka/kconf.h says how they combine). A parser puts "X:" in its
 * short options, CLI_KAFKA_OPTION in its long ones and CLI_KAFKA_USAGE in
 * its help, passes both to cli_kafka_option, and calls cli_kafka_settings
 * after the loop. */
#define CLI_OPT_KAFKA_CONFIG 0x4b43
#define CLI_KAFKA_OPTION                                                                           \
    {                                                                                              \
        "kafka-config", required_argument, NULL, CLI_OPT_KAFKA_CONFIG                              \
    }
#define CLI_KAFKA_USAGE                                                                            \
    "  -X NAME=VALUE            a librdkafka property for every Kafka client tally makes,\n"       \
    "                           e.g. -X security.protocol=SASL_SSL (repeatable)\n"                 \
    "  --kafka-config FILE      librdkafka properties, NAME=VALUE per line, # comments\n"          \
    "                           (default $TALLY_KAFKA_CONFIG); -X wins over the file\n"

/* Takes -X (opt 'X') or --kafka-config. Returns 0, or prints the problem and
 * returns CLI_EXIT_USAGE. */
int cli_kafka_option(const char *command, int opt, const char *value);

/* After the flags: adds the environment's Kafka settings and sets *brokers
 * to the bootstrap servers: the --brokers value in *brokers (NULL if not
 * given), else bootstrap.servers of the settings, else $KAFKA_BROKERS.
 * Returns 0, or prints the problem and returns CLI_EXIT_USAGE. */
int cli_kafka_settings(const char *command, const char **brokers);

/* Progress on stderr, once a second, only when stderr is a terminal. */
typedef struct cli_progress {
    int enabled;
    const char *what;
    int64_t start_ms, last_ms;
} cli_progress;

void cli_progress_init(cli_progress *p, const char *what);
void cli_progress_tick(cli_progress *p, int64_t rows);
void cli_progress_done(cli_progress *p);

/* One logfmt line on stderr: "ts=... level=LEVEL event=EVENT <fields>". fields is
 * a printf format for the rest of the line. Values with spaces must be quoted
 * by the caller with cli_quote. */
void cli_log(const char *level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Writes value as a logfmt-safe quoted string into buf (always quoted). */
const char *cli_quote(const char *value, char *buf, size_t buflen);

#endif
