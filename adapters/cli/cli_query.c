/* adapters/cli/cli_query.c - tally query: read-only SQL against a state database. */
#include "cli_common.h"
#include "commands.h"

#include "query.h"

#include <getopt.h>
#include <json-c/json.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

static const char query_usage[] =
    "usage: tally query --db PATH [--format table|csv|json] [OPTIONS] SQL\n"
    "\n"
    "Runs one read-only SQL statement against the state database, also while another\n"
    "process writes it. Writes, schema changes, ATTACH, PRAGMAs that change anything\n"
    "and extension loading are refused. SQL \"-\" reads the statement from stdin.\n"
    "\n"
    "  --db PATH          state database\n"
    "  --format FMT       table (default), csv, or json (an array of objects)\n"
    "  --timeout DUR      interrupt the query after DUR (default 30s; 0 = none)\n"
    "  --max-rows N       stop after N rows (default 0 = all)\n"
    "\n"
    "Stable views: order_windows(store_id, product_id, window_start, sum, count)\n"
    "              vehicle_latest(vin, received_at, record)\n"
    "Example: tally query --db state.db \\\n"
    "           'SELECT * FROM order_windows ORDER BY count DESC LIMIT 10'\n";

enum format { FORMAT_TABLE, FORMAT_CSV, FORMAT_JSON };

struct output {
    enum format format;
    int ncols;
    char **names;
    /* table: every cell, row-major, until the end */
    char **cells;
    size_t cell_count, cell_cap;
    int64_t rows;
};

static char *cell_text(sqlite3_stmt *stmt, int i)
{
    const unsigned char *text;
    if (sqlite3_column_type(stmt, i) == SQLITE_NULL)
        return strdup("NULL");
    if (sqlite3_column_type(stmt, i) == SQLITE_BLOB) {
        char buf[48];
        snprintf(buf, sizeof(buf), "<blob %d bytes>", sqlite3_column_bytes(stmt, i));
        return strdup(buf);
    }
    text = sqlite3_column_text(stmt, i);
    return strdup(text ? (const char *)text : "");
}

/* One RFC 4180 field: quoted when it holds a comma, quote or line break. */
static void csv_field(const char *s)
{
    bool quote = strpbrk(s, ",\"\r\n") != NULL;
    if (quote)
        putchar('"');
    for (; *s; s++) {
        if (*s == '"')
            putchar('"');
        putchar(*s);
    }
    if (quote)
        putchar('"');
}

static void csv_cell(sqlite3_stmt *stmt, int i);

static int on_columns(void *ctx, int count, const char *const *names)
{
    struct output *out = ctx;
    out->ncols = count;
    out->names = calloc((size_t)count, sizeof(char *));
    if (!out->names)
        return 1;
    for (int i = 0; i < count; i++)
        out->names[i] = strdup(names[i]);
    if (out->format == FORMAT_CSV) {
        for (int i = 0; i < count; i++) {
            fputs(i ? "," : "", stdout);
            csv_field(names[i]);
        }
        fputs("\r\n", stdout);
    } else if (out->format == FORMAT_JSON) {
        fputs("[", stdout);
    }
    return 0;
}

static void csv_cell(sqlite3_stmt *stmt, int i)
{
    if (sqlite3_column_type(stmt, i) != SQLITE_NULL) /* NULL is an empty field */
        csv_field((const char *)sqlite3_column_text(stmt, i));
}

static json_object *json_cell(sqlite3_stmt *stmt, int i)
{
    switch (sqlite3_column_type(stmt, i)) {
    case SQLITE_INTEGER: return json_object_new_int64(sqlite3_column_int64(stmt, i));
    case SQLITE_FLOAT: return json_object_new_double(sqlite3_column_double(stmt, i));
    case SQLITE_NULL: return NULL;
    default:
        return json_object_new_string_len((const char *)sqlite3_column_text(stmt, i),
                                          sqlite3_column_bytes(stmt, i));
    }
}

static int on_row(void *ctx, sqlite3_stmt *stmt)
{
    struct output *out = ctx;
    if (out->format == FORMAT_TABLE) {
        if (out->cell_count + (size_t)out->ncols > out->cell_cap) {
            size_t cap = out->cell_cap ? out->cell_cap * 2 : 1024;
            while (cap < out->cell_count + (size_t)out->ncols)
                cap *= 2;
            char **grown = realloc(out->cells, cap * sizeof(char *));
            if (!grown)
                return 1;
            out->cells = grown;
            out->cell_cap = cap;
        }
        for (int i = 0; i < out->ncols; i++)
            out->cells[out->cell_count++] = cell_text(stmt, i);
    } else if (out->format == FORMAT_CSV) {
        for (int i = 0; i < out->ncols; i++) {
            fputs(i ? "," : "", stdout);
            csv_cell(stmt, i);
        }
        fputs("\r\n", stdout);
    } else {
        json_object *obj = json_object_new_object();
        for (int i = 0; i < out->ncols; i++)
            json_object_object_add(obj, out->names[i], json_cell(stmt, i));
        printf("%s\n%s", out->rows ? "," : "",
               json_object_to_json_string_ext(obj, JSON_C_TO_STRING_PLAIN |
                                                       JSON_C_TO_STRING_NOSLASHESCAPE));
        json_object_put(obj);
    }
    out->rows++;
    return 0;
}

/* Display width in characters: counts UTF-8 lead bytes. */
static size_t width(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            n++;
    return n;
}

static void print_table(struct output *out)
{
    size_t *widths = calloc((size_t)out->ncols, sizeof(size_t));
    if (!widths)
        return;
    for (int c = 0; c < out->ncols; c++)
        widths[c] = width(out->names[c]);
    for (size_t i = 0; i < out->cell_count; i++) {
        size_t w = width(out->cells[i]);
        if (w > widths[i % (size_t)out->ncols])
            widths[i % (size_t)out->ncols] = w;
    }
    for (int c = 0; c < out->ncols; c++)
        printf("%s%s%*s", c ? "  " : "", out->names[c], (int)(widths[c] - width(out->names[c])),
               "");
    putchar('\n');
    for (int c = 0; c < out->ncols; c++) {
        printf("%s", c ? "  " : "");
        for (size_t k = 0; k < widths[c]; k++)
            putchar('-');
    }
    putchar('\n');
    for (size_t i = 0; i < out->cell_count; i++) {
        int c = (int)(i % (size_t)out->ncols);
        printf("%s%s%*s", c ? "  " : "", out->cells[i],
               c == out->ncols - 1 ? 0 : (int)(widths[c] - width(out->cells[i])), "");
        if (c == out->ncols - 1)
            putchar('\n');
    }
    free(widths);
}

static char *read_stdin(void)
{
    size_t cap = 4096, len = 0, n;
    char *buf = malloc(cap);
    while (buf && (n = fread(buf + len, 1, cap - len - 1, stdin)) > 0) {
        len += n;
        if (cap - len < 2) {
            char *grown = realloc(buf, cap *= 2);
            if (!grown) {
                free(buf);
                return NULL;
            }
            buf = grown;
        }
    }
    if (buf)
        buf[len] = '\0';
    return buf;
}

int cmd_query(int argc, char **argv)
{
    static const struct option options[] = {
        {"db", required_argument, NULL, 'd'},      {"format", required_argument, NULL, 'f'},
        {"timeout", required_argument, NULL, 't'}, {"max-rows", required_argument, NULL, 'm'},
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0}};
    const char *db_path = NULL;
    char *sql = NULL, *owned_sql = NULL, err[512];
    struct output out = {0};
    tly_query_options qopts = {.timeout_ms = 30000, .max_rows = 0};
    tly_query_sink sink = {on_columns, on_row};
    tly_query *query = NULL;
    int opt, truncated = 0, status = CLI_EXIT_FAILURE;
    int64_t rows;

    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        switch (opt) {
        case 'd': db_path = optarg; break;
        case 'f':
            if (strcmp(optarg, "table") == 0)
                out.format = FORMAT_TABLE;
            else if (strcmp(optarg, "csv") == 0)
                out.format = FORMAT_CSV;
            else if (strcmp(optarg, "json") == 0)
                out.format = FORMAT_JSON;
            else
                return cli_usage_error("query", "--format must be table, csv or json, not \"%s\"",
                                       optarg);
            break;
        case 't':
            if (cli_parse_duration_ms("query", "--timeout", optarg, &qopts.timeout_ms) < 0)
                return CLI_EXIT_USAGE;
            break;
        case 'm':
            if (cli_parse_int64("query", "--max-rows", optarg, 0, INT64_MAX, &qopts.max_rows) < 0)
                return CLI_EXIT_USAGE;
            break;
        case 'h': fputs(query_usage, stdout); return CLI_EXIT_OK;
        default: return cli_bad_option("query", opt, argv, optind);
        }
    }
    if (!db_path)
        return cli_usage_error("query", "--db is required");
    if (argc - optind != 1)
        return cli_usage_error("query",
                               "give exactly one SQL statement as one argument (quote it)");
    sql = argv[optind];
    if (strcmp(sql, "-") == 0 && !(sql = owned_sql = read_stdin())) {
        fprintf(stderr, "tally query: cannot read the statement from stdin\n");
        return CLI_EXIT_FAILURE;
    }
    if (tly_query_open(db_path, &qopts, &query, err, sizeof(err)) < 0) {
        fprintf(stderr, "tally query: %s\n", err);
        goto done;
    }
    rows = tly_query_run(query, sql, &sink, &out, &truncated, err, sizeof(err));
    if (rows < 0) {
        if (out.format == FORMAT_JSON && out.names)
            fputs("]\n", stdout);
        fprintf(stderr, "tally query: %s\n", err);
        goto done;
    }
    if (out.format == FORMAT_TABLE)
        print_table(&out);
    else if (out.format == FORMAT_JSON)
        fputs(out.rows ? "\n]\n" : "]\n", stdout);
    if (truncated)
        fprintf(stderr, "tally query: stopped after %lld rows (--max-rows)\n", (long long)rows);
    status = CLI_EXIT_OK;
done:
    for (size_t i = 0; i < out.cell_count; i++)
        free(out.cells[i]);
    free(out.cells);
    for (int i = 0; out.names && i < out.ncols; i++)
        free(out.names[i]);
    free(out.names);
    free(owned_sql);
    tly_query_close(query);
    return status;
}
