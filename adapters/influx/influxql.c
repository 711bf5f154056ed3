/* adapters/influx/influxql.c - the InfluxQL SELECT of one pod's range, and the
 * JSON answer of /query read with json-c into one callback per reading.
 *
 * Both sides are plain text work with no connection: the statement is built
 * into the caller's buffer, the answer is parsed from the client's body
 * (influx.c), so either can be tested on its own. */
#include "influxql.h"

#include "error.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* -------------------------------------------------------------- statements --- */

/* Appends text quoted with `quote` (" for identifiers, ' for strings), with
 * the quote and backslash escaped by a backslash, as InfluxQL's scanner
 * reads them. Returns the new end, or NULL when it does not fit before end. */
static char *append_quoted(char *o, char *end, char quote, const char *text)
{
    if (o >= end)
        return NULL;
    *o++ = quote;
    for (const char *p = text; *p; p++) {
        if (*p == quote || *p == '\\') {
            if (o >= end)
                return NULL;
            *o++ = '\\';
        }
        /* A newline ends a quoted token in InfluxQL: write it escaped. */
        if (*p == '\n') {
            if (end - o < 2)
                return NULL;
            *o++ = '\\';
            *o++ = 'n';
            continue;
        }
        if (o >= end)
            return NULL;
        *o++ = *p;
    }
    if (o >= end)
        return NULL;
    *o++ = quote;
    return o;
}

static char *append_text(char *o, char *end, const char *text)
{
    size_t n = strlen(text);
    if (!o || (size_t)(end - o) < n)
        return NULL;
    memcpy(o, text, n);
    return o + n;
}

int tly_influx_build_select(const tly_influx_model *m, const char *pod, int64_t from_ms,
                            int64_t to_ms, char *buf, size_t buflen, char *errbuf, size_t errlen)
{
    char *o = buf, *end = buf + (buflen ? buflen - 1 : 0), times[96];

    if (to_ms <= from_ms)
        return tly_error(errbuf, errlen, "empty time range [%" PRId64 ", %" PRId64 ")", from_ms,
                         to_ms);
    if (buflen == 0)
        return tly_error(errbuf, errlen, "no room for the statement");
    snprintf(times, sizeof(times), " AND time >= %" PRId64 "ms AND time < %" PRId64 "ms GROUP BY ",
             from_ms, to_ms);
    o = append_text(o, end, "SELECT *::field FROM ");
    o = o ? append_quoted(o, end, '"', m->measurement) : NULL;
    o = append_text(o, end, " WHERE ");
    o = o ? append_quoted(o, end, '"', m->pod_tag) : NULL;
    o = append_text(o, end, " = ");
    o = o ? append_quoted(o, end, '\'', pod) : NULL;
    o = append_text(o, end, times);
    o = o ? append_quoted(o, end, '"', m->device_tag) : NULL;
    if (!o)
        return tly_error(errbuf, errlen, "the statement for pod \"%.64s\" is longer than %zu bytes",
                         pod, buflen);
    *o = '\0';
    return 0;
}

/* ----------------------------------------------------------------- answers --- */

static int check_error_and_partial(json_object *obj, const char *what, char *errbuf, size_t errlen)
{
    json_object *field;
    if (json_object_object_get_ex(obj, "error", &field))
        return tly_error(errbuf, errlen, "influxdb: %s",
                         json_object_is_type(field, json_type_string)
                             ? json_object_get_string(field)
                             : json_object_to_json_string(field));
    if (json_object_object_get_ex(obj, "partial", &field) && json_object_get_boolean(field))
        return tly_error(errbuf, errlen,
                         "influxdb cut the %s short (partial answer: its max-row-limit was "
                         "reached); read shorter ranges (--chunk)",
                         what);
    return 0;
}

static int parse_series(json_object *series, const char *device_tag, tly_influx_reading_fn fn,
                        void *opaque, char *errbuf, size_t errlen)
{
    json_object *tags, *columns, *values, *tag, *row, *cell;
    const char *device = "", *name;
    size_t ncolumns, nrows, time_col = SIZE_MAX;

    if (!json_object_is_type(series, json_type_object))
        return tly_error(errbuf, errlen, "influxdb answer: a series is not an object");
    if (check_error_and_partial(series, "series", errbuf, errlen) < 0)
        return -1;
    if (json_object_object_get_ex(series, "tags", &tags) &&
        json_object_object_get_ex(tags, device_tag, &tag) &&
        json_object_is_type(tag, json_type_string))
        device = json_object_get_string(tag);
    if (!json_object_object_get_ex(series, "columns", &columns) ||
        !json_object_is_type(columns, json_type_array))
        return tly_error(errbuf, errlen, "influxdb answer: a series without \"columns\"");
    ncolumns = json_object_array_length(columns);
    for (size_t i = 0; i < ncolumns; i++) {
        json_object *col = json_object_array_get_idx(columns, i);
        if (!json_object_is_type(col, json_type_string))
            return tly_error(errbuf, errlen, "influxdb answer: a column name is not a string");
        if (strcmp(json_object_get_string(col), "time") == 0 && time_col == SIZE_MAX)
            time_col = i;
    }
    if (time_col == SIZE_MAX)
        return tly_error(errbuf, errlen, "influxdb answer: a series without a \"time\" column");
    if (!json_object_object_get_ex(series, "values", &values))
        return 0; /* a series with no rows */
    if (!json_object_is_type(values, json_type_array))
        return tly_error(errbuf, errlen, "influxdb answer: \"values\" is not an array");
    nrows = json_object_array_length(values);
    for (size_t r = 0; r < nrows; r++) {
        int64_t time_ms;
        row = json_object_array_get_idx(values, r);
        if (!json_object_is_type(row, json_type_array) || json_object_array_length(row) != ncolumns)
            return tly_error(errbuf, errlen, "influxdb answer: row %zu does not match the columns",
                             r);
        cell = json_object_array_get_idx(row, time_col);
        if (!json_object_is_type(cell, json_type_int))
            return tly_error(errbuf, errlen,
                             "influxdb answer: time %s is not epoch milliseconds (epoch=ms)",
                             json_object_to_json_string(cell));
        time_ms = json_object_get_int64(cell);
        for (size_t i = 0; i < ncolumns; i++) {
            if (i == time_col)
                continue;
            cell = json_object_array_get_idx(row, i);
            if (!cell) /* JSON null: this point has no such field */
                continue;
            name = json_object_get_string(json_object_array_get_idx(columns, i));
            if (fn(opaque, device, name, time_ms, cell, errbuf, errlen) < 0)
                return -1;
        }
    }
    return 0;
}

int tly_influx_parse(const char *body, size_t len, const char *device_tag, tly_influx_reading_fn fn,
                     void *opaque, char *errbuf, size_t errlen)
{
    json_tokener *tok = json_tokener_new_ex(32);
    json_object *root = NULL, *results, *result, *series_list;
    enum json_tokener_error jerr;
    size_t nresults;
    int rc = -1;

    if (!tok)
        return tly_error(errbuf, errlen, "out of memory");
    if (len > INT32_MAX) {
        tly_error(errbuf, errlen, "influxdb answer of %zu bytes is too large", len);
        goto done;
    }
    root = json_tokener_parse_ex(tok, body, (int)len);
    jerr = json_tokener_get_error(tok);
    if (root && jerr == json_tokener_success) {
        /* InfluxDB ends its answer with a newline; anything else is not JSON. */
        for (size_t i = json_tokener_get_parse_end(tok); i < len; i++)
            if (!isspace((unsigned char)body[i])) {
                json_object_put(root);
                root = NULL;
                break;
            }
        if (!root) {
            tly_error(errbuf, errlen, "influxdb answer is not JSON (trailing data): %.80s", body);
            goto done;
        }
    }
    if (!root || jerr != json_tokener_success) {
        tly_error(errbuf, errlen, "influxdb answer is not JSON (%s): %.80s",
                  jerr == json_tokener_continue ? "cut short" : json_tokener_error_desc(jerr),
                  body);
        goto done;
    }
    if (!json_object_is_type(root, json_type_object)) {
        tly_error(errbuf, errlen, "influxdb answer is not a JSON object: %.80s", body);
        goto done;
    }
    if (check_error_and_partial(root, "answer", errbuf, errlen) < 0)
        goto done;
    if (!json_object_object_get_ex(root, "results", &results) ||
        !json_object_is_type(results, json_type_array)) {
        tly_error(errbuf, errlen, "influxdb answer without \"results\": %.80s", body);
        goto done;
    }
    nresults = json_object_array_length(results);
    for (size_t i = 0; i < nresults; i++) {
        result = json_object_array_get_idx(results, i);
        if (!json_object_is_type(result, json_type_object)) {
            tly_error(errbuf, errlen, "influxdb answer: a result is not an object");
            goto done;
        }
        if (check_error_and_partial(result, "result", errbuf, errlen) < 0)
            goto done;
        if (!json_object_object_get_ex(result, "series", &series_list))
            continue; /* nothing in the range */
        if (!json_object_is_type(series_list, json_type_array)) {
            tly_error(errbuf, errlen, "influxdb answer: \"series\" is not an array");
            goto done;
        }
        for (size_t s = 0; s < json_object_array_length(series_list); s++)
            if (parse_series(json_object_array_get_idx(series_list, s), device_tag, fn, opaque,
                             errbuf, errlen) < 0)
                goto done;
    }
    rc = 0;
done:
    json_object_put(root);
    json_tokener_free(tok);
    return rc;
}
