/* engine/pipeline.c - decode JSON events and apply them with a pipeline's SQL.
 *
 * Pipeline file format
 * --------------------
 * A pipeline file is SQL text. Lines of the form "-- @word ..." are directives;
 * everything else is SQL or ordinary comments.
 *
 *   -- @pipeline NAME
 *   -- @entity NAME          changelog entity written by this pipeline's tables;
 *                            replay routes changelog rows here by it (with
 *                            @state: the state table's name unless given)
 *   -- @input TOPIC          the daemon's input topic unless --input-topic
 *                            says otherwise (default NAME.input)
 *   -- @output TOPIC         its output topic (default NAME.output)
 *   -- @param NAME VALUE [per_run]
 *                            a setting, bound as :NAME in every statement; the
 *                            caller may override VALUE ("window_ms=300000").
 *                            The first open records it in the database and a
 *                            later one with another value is refused, unless
 *                            it is per_run: one that may change between runs
 *                            without corrupting the state (a dedup window)
 *   -- @field PARAM PATHS TYPE MODE
 *        PATHS  dot path into the event ("data.id"); "a|b" uses the first of a, b
 *               that is present and not null
 *        TYPE   id       string or integer, bound as text
 *               text     string
 *               int      integer (JSON integer syntax, within int64)
 *               decimal6 number or decimal string, exact, bound as integer
 *                        millionths ("83.71" -> 83710000); more places is an error
 *               time_ms  integer epoch milliseconds, 0 .. year 9999
 *               time_any epoch milliseconds, epoch seconds (below 1e11) or an
 *                        RFC 3339 string, as a number or a string, bound as
 *                        epoch milliseconds (engine/timestamp.h has the rules)
 *               bool     true/false, bound as 1/0
 *               json     any value, bound as its JSON text
 *        MODE   required     absent -> the event is rejected
 *               optional     absent -> :PARAM is NULL
 *               skip_empty   required, and an empty string skips the event
 *   -- @each KEY VALUE PATH [except NAME,...]
 *                            run @stage once per member of the object at PATH,
 *                            with :KEY = member name and :VALUE = its JSON text;
 *                            or, when every @stage statement reads the table
 *                            tly_each(:each) instead, once per event, with
 *                            one row (key, value) per member in the event's
 *                            order (engine/members.h). One @each per file: a
 *                            second is refused
 *
 * Sections start with "-- @NAME" alone on a line (NAME one of those below)
 * and run to the next section. A section may hold several statements; they
 * run in order.
 *
 * A pipeline of your own needs only two (engine/derive.h derives the rest
 * from the state table: the changelog, @merge, @replay and a default @emit):
 *
 *   @state   the state table: one CREATE TABLE with a PRIMARY KEY (plus
 *            indexes and views), applied by the first open of a database and
 *            recorded there; a later open with another @state is refused
 *   @fold    per valid event: insert into or update the state table (an
 *            upsert); bound like @stage. Nothing is staged by hand: the
 *            engine marks each key the batch touched and writes one
 *            changelog row per changed key per batch
 *
 * The built-in pipelines spell everything themselves instead:
 *
 *   @setup   once when the pipeline opens (temporary staging tables)
 *   @check   per event: a SELECT whose first column is NULL for a valid event or
 *            the reason it is invalid
 *            (@check and @stage may also use :event, the whole event's JSON
 *            text as received, and :partition, the input partition it came
 *            from: state rows record it in their part column, see
 *            migrations/008_partitions.sql)
 *   @stage   per event (per @each member): write into the staging tables
 *   @merge   per batch: fold staging into the state tables, whose triggers write
 *            the changelog; empty the staging tables. A statement with a
 *            RETURNING clause of (key, value) hands over the batch's output
 *            records as it writes them: an emit of exactly the changes the
 *            last apply made (what the daemon asks for after each batch)
 *            then sends those instead of running @emit, which is only read
 *            for other ranges and must give the same records (orders: a
 *            third of the daemon's time went to an @emit that found again
 *            what the merge had just written). @emit must then select only
 *            its own entity's changelog rows.
 *   @replay  per changelog row: :image (after-image JSON), :key_seq, :partition
 *            (the input partition that made it); the first
 *            statement applies the image and must change nothing unless :key_seq
 *            is newer than the key's; later ones may maintain derived tables
 *   @emit    per committed batch in the daemon: a SELECT of (key, value) output
 *            records for the changes with :from_seq < seq <= :to_seq; :now_ms is
 *            the wall-clock time of the emit
 *
 * Pipelines whose outputs are "the latest record of everything changed since
 * the last time" (telemetry) keep that set in a table of their own instead and
 * declare three more sections; the daemon then uses them for every emit
 * strategy (inline, log_compacted, window_stream, state_store):
 *
 *   @late    per event, only with event-time windows (window_stream), after
 *            @check: a SELECT whose first column is NULL, or why the event's
 *            window has already closed; such an event is counted as late and
 *            dead-lettered. Statements that return no row (the event's own
 *            clock update) run only for an event found not late.
 *   @flush   a SELECT of (key, value) output records for everything pending
 *            with a mark <= :flush_seq; with :closed_only = 1 only what belongs
 *            to windows that have closed; :now_ms as in @emit
 *   @flushed run once the records of a @flush are safely out: forget what was
 *            pending with a mark <= :flush_seq (and :closed_only as above). A
 *            mark is the changelog seq when it was last marked, so what changes
 *            again after the flush read stays pending.
 *
 * :allowed_lateness_ms is bound in @late, @flush and @flushed (0 unless the
 * daemon sets it), :windowed (1 with event-time windows, else 0) in @merge, so
 * that without windows the pending set need not keep one row per window.
 *
 * Batches: staging coalesces a batch per key, so merge writes one state update
 * and one changelog row per changed key. If a statement fails on an event that
 * decoded fine (a constraint, an overflow), the batch is redone one event at a
 * time under savepoints so that only the offending event is rejected.
 */
#include "pipeline.h"
#include "error.h"

#include "decimal.h"
#include "derive.h"
#include "embedded_sql.h"
#include "jsonscan.h"
#include "members.h"
#include "timestamp.h"
#include "utf8.h"

#include <ctype.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_FIELDS 32
#define MAX_PARAMS 16
#define MAX_ALTERNATIVES 4
#define MAX_SEGMENTS 8
#define MAX_STATEMENTS 12
#define MAX_EXCEPT 16
#define MAX_TIME_MS 253402300799999LL /* 9999-12-31T23:59:59.999Z */
#define SECTION_COUNT 11

enum field_type { FT_ID, FT_TEXT, FT_INT, FT_DECIMAL6, FT_TIME_MS, FT_BOOL, FT_JSON, FT_TIME_ANY };
#define FIELD_TYPE_COUNT 8
enum field_mode { FM_REQUIRED, FM_OPTIONAL, FM_SKIP_EMPTY };

struct path {
    int segment_count;
    char *segments[MAX_SEGMENTS];
};

struct field {
    char *param;
    char *paths_text; /* as written, for messages: "normTs|ts" */
    int alternative_count;
    struct path alternatives[MAX_ALTERNATIVES];
    enum field_type type;
    enum field_mode mode;
};

struct setting {
    char *name;
    char *value;
    bool per_run; /* not recorded in meta: may change between runs */
};

/* A per-event statement with the bind index of every field (0 = unused). */
struct bound_statement {
    sqlite3_stmt *stmt;
    int field_index[MAX_FIELDS];
    int each_key_index, each_value_index;
    int each_members_index; /* :each, the event's members for tly_each */
    int event_index;        /* :event, the raw event */
    int partition_index;    /* :partition, the event's input partition */
};

struct section {
    int count;
    struct bound_statement statements[MAX_STATEMENTS];
};

/* A decoded field value, borrowed from the json-c tree or from `buf`. */
struct value {
    enum { V_NULL, V_INT, V_TEXT } kind;
    int64_t i;
    const char *text;
    int text_len;
    char buf[24];
};

struct tly_pipeline {
    tly_store *store;
    sqlite3 *db;
    char *name;
    char *entity;
    char *source_name;
    int field_count;
    struct field fields[MAX_FIELDS];
    int setting_count;
    struct setting settings[MAX_PARAMS];
    bool has_each;
    char *each_key, *each_value;
    struct path each_path;
    int except_count;
    char *except[MAX_EXCEPT];
    /* @stage reads tly_each(:each): it runs once per event over this list */
    bool stage_per_event;
    tly_member *members;
    int member_cap;
    tly_member_list member_list;
    struct section check, stage, merge, replay, emit, late, flush, flushed;
    bool windowed; /* run @late per event and flush closed windows only */
    sqlite3_stmt *last_seq;
    json_tokener *tokener;
    tly_jsonscan *scan; /* the fast reader; events it declines go to json-c */
    bool scan_enabled;
    int64_t scanned_events; /* events decoded by the fast reader */
    char meta_applied[96], meta_skipped[96], meta_rejected[96], meta_late[96];
    char *input_topic, *output_topic; /* @input, @output, or NULL */
    int section_line[SECTION_COUNT];  /* where each section starts in the file */
    bool derived;                     /* @state and @fold: see derive.h */
    tly_derived derivation;
    /* What @merge RETURNed for the last apply, which wrote the changelog rows
     * (outputs_from, outputs_to]: records[i] are offsets into text. */
    bool merge_returns;
    bool outputs_valid;    /* nothing has changed the state since that apply */
    bool outputs_repeated; /* one event at a time: a key may come more than once */
    int64_t outputs_from, outputs_to;
    struct merge_output {
        size_t key, key_len, value, value_len;
    } * records;
    size_t record_count, record_cap;
    char *text;
    size_t text_len, text_cap;
};

/* ------------------------------------------------------------------------ */
/* Parsing the pipeline file                                                 */
/* ------------------------------------------------------------------------ */

static int parse_path(const char *text, struct path *path)
{
    char *copy = strdup(text), *save = NULL, *seg;
    int rc = 0;
    path->segment_count = 0;
    if (!copy)
        return -1;
    for (seg = strtok_r(copy, ".", &save); seg; seg = strtok_r(NULL, ".", &save)) {
        if (path->segment_count == MAX_SEGMENTS ||
            !(path->segments[path->segment_count] = strdup(seg))) {
            rc = -1;
            break;
        }
        path->segment_count++;
    }
    free(copy);
    return path->segment_count > 0 ? rc : -1;
}

static void free_path(struct path *path)
{
    for (int i = 0; i < path->segment_count; i++)
        free(path->segments[i]);
    path->segment_count = 0;
}

static int parse_field(tly_pipeline *p, char **words, int nwords, char *errbuf, size_t errlen)
{
    static const char *types[] = {"id",      "text", "int",  "decimal6",
                                  "time_ms", "bool", "json", "time_any"};
    static const char *modes[] = {"required", "optional", "skip_empty"};
    struct field *f;
    char *alt, *save = NULL, *copy;
    int t, m;

    if (nwords != 5)
        return tly_error(errbuf, errlen, "@field needs PARAM PATHS TYPE MODE");
    if (p->field_count == MAX_FIELDS)
        return tly_error(errbuf, errlen, "more than %d @field lines", MAX_FIELDS);
    for (t = 0; t < FIELD_TYPE_COUNT && strcmp(words[3], types[t]); t++)
        ;
    for (m = 0; m < 3 && strcmp(words[4], modes[m]); m++)
        ;
    if (t == FIELD_TYPE_COUNT)
        return tly_error(errbuf, errlen,
                         "@field %s: unknown type \"%s\" (id, text, int, decimal6, "
                         "time_ms, time_any, bool, json)",
                         words[1], words[3]);
    if (m == 3)
        return tly_error(errbuf, errlen,
                         "@field %s: unknown mode \"%s\" (required, optional, "
                         "skip_empty)",
                         words[1], words[4]);
    f = &p->fields[p->field_count++];
    f->param = strdup(words[1]);
    f->paths_text = strdup(words[2]);
    f->type = (enum field_type)t;
    f->mode = (enum field_mode)m;
    if (!f->param || !f->paths_text || !(copy = strdup(words[2])))
        return tly_error(errbuf, errlen, "out of memory");
    for (alt = strtok_r(copy, "|", &save); alt; alt = strtok_r(NULL, "|", &save)) {
        if (f->alternative_count == MAX_ALTERNATIVES ||
            parse_path(alt, &f->alternatives[f->alternative_count]) < 0) {
            free(copy);
            return tly_error(errbuf, errlen, "@field %s: bad path \"%s\"", words[1], words[2]);
        }
        f->alternative_count++;
    }
    free(copy);
    return 0;
}

static int parse_each(tly_pipeline *p, char **words, int nwords, char *errbuf, size_t errlen)
{
    if (nwords != 4 && !(nwords == 6 && strcmp(words[4], "except") == 0))
        return tly_error(errbuf, errlen, "@each needs KEY VALUE PATH [except NAME,...]");
    /* One object per event is iterated; a second @each would overwrite the
     * first (and lose what it allocated) without a word. */
    if (p->has_each)
        return tly_error(errbuf, errlen,
                         "@each given twice: a pipeline iterates one object per event");
    p->has_each = true;
    p->each_key = strdup(words[1]);
    p->each_value = strdup(words[2]);
    if (!p->each_key || !p->each_value || parse_path(words[3], &p->each_path) < 0)
        return tly_error(errbuf, errlen, "@each: bad path \"%s\"", words[3]);
    if (nwords == 6) {
        char *save = NULL, *name;
        for (name = strtok_r(words[5], ",", &save); name; name = strtok_r(NULL, ",", &save)) {
            if (p->except_count == MAX_EXCEPT)
                return tly_error(errbuf, errlen, "@each: too many except names");
            p->except[p->except_count++] = strdup(name);
        }
    }
    return 0;
}

static int split_words(char *line, char **words, int max)
{
    int n = 0;
    char *save = NULL, *w;
    for (w = strtok_r(line, " \t\r", &save); w && n < max; w = strtok_r(NULL, " \t\r", &save))
        words[n++] = w;
    return n;
}

/* Prepares every statement of one section's text. */
static int prepare_section(tly_pipeline *p, const char *section_name, const char *sql,
                           struct section *out, char *errbuf, size_t errlen)
{
    const char *tail = sql;
    while (tail && *tail) {
        sqlite3_stmt *stmt = NULL;
        if (sqlite3_prepare_v3(p->db, tail, -1, SQLITE_PREPARE_PERSISTENT, &stmt, &tail) !=
            SQLITE_OK)
            return tly_error(errbuf, errlen, "%s @%s: %s", p->source_name, section_name,
                             sqlite3_errmsg(p->db));
        if (!stmt)
            continue; /* only comments or whitespace left */
        if (out->count == MAX_STATEMENTS) {
            sqlite3_finalize(stmt);
            return tly_error(errbuf, errlen, "%s @%s: more than %d statements", p->source_name,
                             section_name, MAX_STATEMENTS);
        }
        out->statements[out->count++].stmt = stmt;
    }
    return 0;
}

/* Prefixes errbuf with "FILE:LINE: "; returns -1. */
static int where(tly_pipeline *p, int line_no, char *errbuf, size_t errlen)
{
    char what[512];
    snprintf(what, sizeof(what), "%s", errbuf);
    return tly_error(errbuf, errlen, "%s:%d: %s", p->source_name, line_no, what);
}

static int parse_file(tly_pipeline *p, const char *text, char **section_sql, char *errbuf,
                      size_t errlen)
{
    static const char *section_names[] = {"setup", "check", "stage",   "merge", "replay", "emit",
                                          "late",  "flush", "flushed", "state", "fold"};
    const char *line = text;
    int current = -1, line_no = 0;
    size_t lengths[SECTION_COUNT] = {0};

    for (int i = 0; i < SECTION_COUNT; i++) {
        section_sql[i] = calloc(1, strlen(text) + 1);
        if (!section_sql[i])
            return tly_error(errbuf, errlen, "out of memory");
    }
    while (*line) {
        const char *eol = strchr(line, '\n');
        size_t len = eol ? (size_t)(eol - line) : strlen(line);
        const char *q = line;

        line_no++;
        while (q < line + len && (*q == ' ' || *q == '\t'))
            q++;
        if ((size_t)(line + len - q) > 4 && strncmp(q, "-- @", 4) == 0) {
            char buf[512], *words[8];
            int nwords, s;
            size_t dlen = (size_t)(line + len - q) - 4;
            if (dlen >= sizeof(buf))
                return tly_error(errbuf, errlen, "%s:%d: directive line too long", p->source_name,
                                 line_no);
            memcpy(buf, q + 4, dlen);
            buf[dlen] = '\0';
            nwords = split_words(buf, words, 8);
            for (s = 0; s < SECTION_COUNT && nwords == 1 && strcmp(words[0], section_names[s]); s++)
                ;
            if (nwords == 1 && s < SECTION_COUNT) {
                current = s;
                if (!p->section_line[s])
                    p->section_line[s] = line_no + 1;
            } else if (nwords == 2 && strcmp(words[0], "input") == 0) {
                free(p->input_topic);
                p->input_topic = strdup(words[1]);
            } else if (nwords == 2 && strcmp(words[0], "output") == 0) {
                free(p->output_topic);
                p->output_topic = strdup(words[1]);
            } else if (nwords == 2 && strcmp(words[0], "pipeline") == 0) {
                free(p->name);
                p->name = strdup(words[1]);
            } else if (nwords == 2 && strcmp(words[0], "entity") == 0) {
                free(p->entity);
                p->entity = strdup(words[1]);
            } else if ((nwords == 3 || (nwords == 4 && strcmp(words[3], "per_run") == 0)) &&
                       strcmp(words[0], "param") == 0) {
                if (p->setting_count == MAX_PARAMS)
                    return tly_error(errbuf, errlen, "%s: too many @param", p->source_name);
                p->settings[p->setting_count].name = strdup(words[1]);
                p->settings[p->setting_count].per_run = nwords == 4;
                p->settings[p->setting_count++].value = strdup(words[2]);
            } else if (nwords >= 1 && strcmp(words[0], "field") == 0) {
                if (parse_field(p, words, nwords, errbuf, errlen) < 0)
                    return where(p, line_no, errbuf, errlen);
            } else if (nwords >= 1 && strcmp(words[0], "each") == 0) {
                if (parse_each(p, words, nwords, errbuf, errlen) < 0)
                    return where(p, line_no, errbuf, errlen);
            } else {
                return tly_error(errbuf, errlen,
                                 "%s:%d: unknown directive \"-- @%.*s\" (pipeline, entity, "
                                 "input, output, param, field, each, or a section: setup, "
                                 "check, state, fold, stage, merge, replay, emit, late, flush, "
                                 "flushed)",
                                 p->source_name, line_no, (int)dlen, q + 4);
            }
        } else if (current >= 0) {
            memcpy(section_sql[current] + lengths[current], line, len);
            lengths[current] += len;
            section_sql[current][lengths[current]++] = '\n';
        }
        line += len + (eol ? 1 : 0);
    }
    if (!p->name)
        return tly_error(errbuf, errlen, "%s: needs \"-- @pipeline NAME\"", p->source_name);
    if (!p->entity && !section_sql[9][0] && section_sql[10][0])
        return tly_error(errbuf, errlen,
                         "%s:%d: @fold needs a @state section: the state table it folds into",
                         p->source_name, p->section_line[10] - 1);
    if (!p->entity && !section_sql[9][0])
        return tly_error(errbuf, errlen,
                         "%s:%d: needs \"-- @entity NAME\" (or a @state section, whose table "
                         "names the entity)",
                         p->source_name, line_no);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Binding names to parameters                                               */
/* ------------------------------------------------------------------------ */

static const char *setting_value(tly_pipeline *p, const char *name)
{
    for (int i = 0; i < p->setting_count; i++)
        if (strcmp(p->settings[i].name, name) == 0)
            return p->settings[i].value;
    return NULL;
}

static void bind_setting(sqlite3_stmt *stmt, int index, const char *value)
{
    char *end;
    long long n = strtoll(value, &end, 10);
    if (*value && *end == '\0')
        sqlite3_bind_int64(stmt, index, n);
    else
        sqlite3_bind_text(stmt, index, value, -1, SQLITE_TRANSIENT);
}

/* Resolves every :name in the section's statements. Per-event sections may use
 * fields and @each names; all may use settings; @replay may use :image and
 * :key_seq. Anything else is a mistake in the pipeline file, caught here rather
 * than as a NULL at run time. */
static int resolve_parameters(tly_pipeline *p, const char *section_name, struct section *s,
                              bool per_event, bool replay, char *errbuf, size_t errlen)
{
    for (int k = 0; k < s->count; k++) {
        struct bound_statement *b = &s->statements[k];
        int n = sqlite3_bind_parameter_count(b->stmt);
        for (int i = 1; i <= n; i++) {
            const char *full = sqlite3_bind_parameter_name(b->stmt, i);
            const char *name = full ? full + 1 : NULL;
            const char *value;
            bool known = false;

            if (!name)
                return tly_error(errbuf, errlen, "%s @%s: use named parameters (:name), not ?",
                                 p->source_name, section_name);
            if ((value = setting_value(p, name))) {
                bind_setting(b->stmt, i, value);
                continue;
            }
            if (per_event) {
                for (int f = 0; f < p->field_count; f++)
                    if (strcmp(p->fields[f].param, name) == 0) {
                        b->field_index[f] = i;
                        known = true;
                    }
                if (p->has_each && strcmp(p->each_key, name) == 0) {
                    b->each_key_index = i;
                    known = true;
                }
                if (p->has_each && strcmp(p->each_value, name) == 0) {
                    b->each_value_index = i;
                    known = true;
                }
                if (!known && p->has_each && s == &p->stage && strcmp(name, "each") == 0) {
                    b->each_members_index = i;
                    known = true;
                }
                if (!known && strcmp(name, "event") == 0) {
                    b->event_index = i;
                    known = true;
                }
                if (!known && strcmp(name, "partition") == 0) {
                    b->partition_index = i;
                    known = true;
                }
            }
            if (replay && (strcmp(name, "image") == 0 || strcmp(name, "key_seq") == 0 ||
                           strcmp(name, "partition") == 0))
                known = true;
            if (s == &p->emit && (strcmp(name, "from_seq") == 0 || strcmp(name, "to_seq") == 0 ||
                                  strcmp(name, "now_ms") == 0))
                known = true;
            if ((s == &p->late || s == &p->flush || s == &p->flushed) &&
                strcmp(name, "allowed_lateness_ms") == 0)
                known = true;
            if ((s == &p->flush || s == &p->flushed) &&
                (strcmp(name, "flush_seq") == 0 || strcmp(name, "closed_only") == 0))
                known = true;
            if (s == &p->merge && strcmp(name, "windowed") == 0)
                known = true;
            if (s == &p->flush && strcmp(name, "now_ms") == 0)
                known = true;
            if (!known)
                return tly_error(errbuf, errlen,
                                 "%s @%s uses %s, which no @field, @param or @each "
                                 "defines",
                                 p->source_name, section_name, full);
        }
    }
    return 0;
}

/* Binds a value the daemon decides at run time (:allowed_lateness_ms,
 * :closed_only, :windowed) in every statement of the sections that may use it. Bindings
 * survive sqlite3_reset, so this is done once per change. */
static void bind_runtime(tly_pipeline *p, const char *name, int64_t value)
{
    struct section *sections[] = {&p->late, &p->flush, &p->flushed, &p->merge};
    char full[64];
    snprintf(full, sizeof(full), ":%s", name);
    for (size_t s = 0; s < sizeof(sections) / sizeof(sections[0]); s++)
        for (int k = 0; k < sections[s]->count; k++) {
            int index = sqlite3_bind_parameter_index(sections[s]->statements[k].stmt, full);
            if (index)
                sqlite3_bind_int64(sections[s]->statements[k].stmt, index, value);
        }
}

/* Overrides @param defaults with "name=value" strings. */
static int apply_overrides(tly_pipeline *p, const char *const *params, char *errbuf, size_t errlen)
{
    for (; params && *params; params++) {
        const char *eq = strchr(*params, '=');
        bool found = false;
        if (!eq)
            return tly_error(errbuf, errlen, "setting \"%s\" must look like name=value", *params);
        for (int i = 0; i < p->setting_count; i++) {
            if (strlen(p->settings[i].name) == (size_t)(eq - *params) &&
                strncmp(p->settings[i].name, *params, (size_t)(eq - *params)) == 0) {
                free(p->settings[i].value);
                p->settings[i].value = strdup(eq + 1);
                found = true;
            }
        }
        if (!found)
            return tly_error(errbuf, errlen, "pipeline %s has no setting \"%.*s\"", p->name,
                             (int)(eq - *params), *params);
    }
    return 0;
}

/* The first open records the settings; later opens must match them. */
static int check_recorded_settings(tly_pipeline *p, char *errbuf, size_t errlen)
{
    for (int i = 0; i < p->setting_count; i++) {
        char key[160], recorded[128];
        int rc;
        if (p->settings[i].per_run)
            continue;
        snprintf(key, sizeof(key), "pipeline.%s.%s", p->name, p->settings[i].name);
        rc = tly_store_meta_get_text(p->store, key, recorded, sizeof(recorded));
        if (rc < 0)
            return tly_error(errbuf, errlen, "cannot read %s from meta: %s", key,
                             sqlite3_errmsg(p->db));
        if (rc == 1 && strcmp(recorded, p->settings[i].value) != 0)
            return tly_error(errbuf, errlen,
                             "database %s was built by pipeline %s with %s=%s, not %s; mixing them "
                             "would corrupt the state: use the same setting or a new database",
                             tly_store_path(p->store), p->name, p->settings[i].name, recorded,
                             p->settings[i].value);
        if (rc == 0 && tly_store_meta_set_text(p->store, key, p->settings[i].value) < 0)
            return tly_error(errbuf, errlen, "cannot record %s in meta: %s", key,
                             sqlite3_errmsg(p->db));
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Open / close                                                              */
/* ------------------------------------------------------------------------ */

const char *const *tly_pipeline_builtin_names(void)
{
    static char names[16][32];
    static const char *list[17];
    if (!list[0]) {
        int n = 0;
        for (const struct tly_embedded_sql *e = tly_embedded_pipelines; e->name && n < 16; e++) {
            snprintf(names[n], sizeof(names[n]), "%.*s", (int)(strlen(e->name) - 4), e->name);
            list[n] = names[n];
            n++;
        }
    }
    return list;
}

static char *read_file(const char *path, char *errbuf, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    char *text = NULL;
    long size;
    if (!f) {
        tly_error(errbuf, errlen, "cannot open pipeline file %s: %m", path);
        return NULL;
    }
    if (fseek(f, 0, SEEK_END) == 0 && (size = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (text = malloc((size_t)size + 1)) && fread(text, 1, (size_t)size, f) == (size_t)size) {
        text[size] = '\0';
    } else {
        free(text);
        text = NULL;
        tly_error(errbuf, errlen, "cannot read pipeline file %s", path);
    }
    fclose(f);
    return text;
}

bool tly_pipeline_is_file(const char *name)
{
    size_t len = strlen(name);
    return strchr(name, '/') || (len > 4 && strcmp(name + len - 4, ".sql") == 0);
}

/* The text of built-in pipeline `name`, or of the pipeline file at that path
 * (*owned is then the buffer to free); sets p->source_name. NULL with errbuf. */
static const char *load_source(tly_pipeline *p, const char *name, char **owned, char *errbuf,
                               size_t errlen)
{
    const char *text = NULL;
    if (tly_pipeline_is_file(name)) {
        if (!(text = *owned = read_file(name, errbuf, errlen)))
            return NULL;
        p->source_name = strdup(name);
    } else {
        for (const struct tly_embedded_sql *e = tly_embedded_pipelines; e->name; e++)
            if (strlen(e->name) == strlen(name) + 4 && strncmp(e->name, name, strlen(name)) == 0) {
                text = e->text;
                p->source_name = malloc(strlen(e->name) + 5);
                if (p->source_name)
                    sprintf(p->source_name, "sql/%s", e->name);
            }
        if (!text) {
            char known[256] = "";
            for (const char *const *n = tly_pipeline_builtin_names(); *n; n++)
                snprintf(known + strlen(known), sizeof(known) - strlen(known), "%s%s",
                         known[0] ? ", " : "", *n);
            tly_error(errbuf, errlen,
                      "unknown pipeline \"%s\" (built in: %s; or a path to a .sql "
                      "pipeline file)",
                      name, known);
            return NULL;
        }
    }
    if (!p->source_name) {
        tly_error(errbuf, errlen, "out of memory");
        return NULL;
    }
    return text;
}

/* Prepares every @fold statement as the pipeline's @stage, each checked
 * (derive.h) and located by its line in errors. */
static int prepare_fold(tly_pipeline *p, const char *sql, char *errbuf, size_t errlen)
{
    const char *tail = sql;
    while (tail && *tail) {
        sqlite3_stmt *stmt = NULL;
        int line = p->section_line[10];
        for (const char *c = sql; c < tail; c++)
            line += *c == '\n';
        while (*tail == '\n' || *tail == ' ' || *tail == '\t' || *tail == '\r')
            line += *tail++ == '\n';
        if (tly_derive_prepare_fold(p->db, &p->derivation, &tail, &stmt, errbuf, errlen) < 0)
            return where(p, line, errbuf, errlen);
        if (!stmt)
            continue;
        if (p->stage.count == MAX_STATEMENTS) {
            sqlite3_finalize(stmt);
            return tly_error(errbuf, errlen, "%s:%d: @fold: more than %d statements",
                             p->source_name, line, MAX_STATEMENTS);
        }
        p->stage.statements[p->stage.count++].stmt = stmt;
    }
    return 0;
}

/* A @state/@fold pipeline: installs or checks the schema and stands in the
 * derived SQL for the sections the file leaves out (section_sql[3..5]:
 * merge, replay, emit). Nothing to do for other pipelines. */
static int derive_sections(tly_pipeline *p, char **section_sql, char *errbuf, size_t errlen)
{
    const char *state = section_sql[9], *fold = section_sql[10];

    if (!fold[0] && !state[0])
        return 0;
    if (!fold[0] || !state[0])
        return tly_error(errbuf, errlen, "%s:%d: @state and @fold go together", p->source_name,
                         (fold[0] ? p->section_line[10] : p->section_line[9]) - 1);
    if (section_sql[2][0] || section_sql[3][0])
        return tly_error(errbuf, errlen,
                         "%s:%d: @fold derives the staging and the merge: drop @stage and @merge "
                         "(or @state and @fold, and write all of them yourself)",
                         p->source_name,
                         (section_sql[2][0] ? p->section_line[2] : p->section_line[3]) - 1);
    p->derived = true;
    if (tly_derive(p->store, p->name, p->entity, p->source_name, p->section_line[9], state,
                   &p->derivation, errbuf, errlen) < 0)
        return -1;
    if (tly_derive_register(p->db, &p->derivation, errbuf, errlen) < 0)
        return -1;
    if (!p->entity && !(p->entity = strdup(p->derivation.table)))
        return tly_error(errbuf, errlen, "out of memory");
    free(section_sql[3]);
    section_sql[3] = strdup(p->derivation.merge_sql);
    if (!section_sql[4][0]) {
        free(section_sql[4]);
        section_sql[4] = strdup(p->derivation.replay_sql);
    }
    if (!section_sql[5][0]) {
        free(section_sql[5]);
        section_sql[5] = strdup(p->derivation.emit_sql);
    }
    if (!section_sql[3] || !section_sql[4] || !section_sql[5])
        return tly_error(errbuf, errlen, "out of memory");
    return prepare_fold(p, fold, errbuf, errlen);
}

int tly_pipeline_open(tly_store *store, const char *name, const char *const *params, int flags,
                      tly_pipeline **out, char *errbuf, size_t errlen)
{
    tly_pipeline *p = calloc(1, sizeof(*p));
    char *owned_text = NULL, *section_sql[SECTION_COUNT] = {0};
    const char *text = NULL;
    char *msg = NULL;
    bool savepoint = false;
    int rc = -1;

    *out = NULL;
    if (!p)
        return tly_error(errbuf, errlen, "out of memory");
    p->store = store;
    p->db = tly_store_db(store);
    if (!(text = load_source(p, name, &owned_text, errbuf, errlen)))
        goto done;
    /* A refused file leaves nothing behind: no @state installed, no settings
     * recorded. */
    if (sqlite3_exec(p->db, "SAVEPOINT tly_open", NULL, NULL, NULL) != SQLITE_OK) {
        tly_error(errbuf, errlen, "%s", sqlite3_errmsg(p->db));
        goto done;
    }
    savepoint = true;
    if (parse_file(p, text, section_sql, errbuf, errlen) < 0 ||
        apply_overrides(p, params, errbuf, errlen) < 0)
        goto done;
    if (sqlite3_exec(p->db, section_sql[0], NULL, NULL, &msg) != SQLITE_OK) {
        tly_error(errbuf, errlen, "%s @setup: %s", p->source_name, msg ? msg : "?");
        sqlite3_free(msg);
        goto done;
    }
    if (derive_sections(p, section_sql, errbuf, errlen) < 0 ||
        tly_members_register(p->db, errbuf, errlen) < 0)
        goto done;
    if (prepare_section(p, "check", section_sql[1], &p->check, errbuf, errlen) < 0 ||
        (!p->derived &&
         prepare_section(p, "stage", section_sql[2], &p->stage, errbuf, errlen) < 0) ||
        prepare_section(p, "merge", section_sql[3], &p->merge, errbuf, errlen) < 0 ||
        prepare_section(p, "replay", section_sql[4], &p->replay, errbuf, errlen) < 0 ||
        prepare_section(p, "emit", section_sql[5], &p->emit, errbuf, errlen) < 0 ||
        prepare_section(p, "late", section_sql[6], &p->late, errbuf, errlen) < 0 ||
        prepare_section(p, "flush", section_sql[7], &p->flush, errbuf, errlen) < 0 ||
        prepare_section(p, "flushed", section_sql[8], &p->flushed, errbuf, errlen) < 0 ||
        resolve_parameters(p, "check", &p->check, true, false, errbuf, errlen) < 0 ||
        resolve_parameters(p, p->derived ? "fold" : "stage", &p->stage, true, false, errbuf,
                           errlen) < 0 ||
        resolve_parameters(p, "merge", &p->merge, false, false, errbuf, errlen) < 0 ||
        resolve_parameters(p, "replay", &p->replay, false, true, errbuf, errlen) < 0 ||
        resolve_parameters(p, "emit", &p->emit, false, false, errbuf, errlen) < 0 ||
        resolve_parameters(p, "late", &p->late, true, false, errbuf, errlen) < 0 ||
        resolve_parameters(p, "flush", &p->flush, false, false, errbuf, errlen) < 0 ||
        resolve_parameters(p, "flushed", &p->flushed, false, false, errbuf, errlen) < 0)
        goto done;
    for (int k = 0; k < p->stage.count; k++)
        if (p->stage.statements[k].each_members_index)
            p->stage_per_event = true;
    for (int k = 0; k < p->stage.count; k++)
        if (p->stage_per_event && !p->stage.statements[k].each_members_index) {
            /* one run per event for some statements and per member for the
             * others would interleave them differently from the file */
            tly_error(errbuf, errlen,
                      "%s @stage: statement %d does not read tly_each(:each) while another "
                      "does; read the members through tly_each(:each) in every @stage "
                      "statement, or bind :%s and :%s in all of them",
                      p->source_name, k + 1, p->each_key, p->each_value);
            goto done;
        }
    for (int k = 0; k < p->merge.count; k++) {
        int columns = sqlite3_column_count(p->merge.statements[k].stmt);
        if (columns != 0 && columns != 2) {
            tly_error(errbuf, errlen,
                      "%s @merge: a statement that returns rows returns (key, value), not %d "
                      "columns",
                      p->source_name, columns);
            goto done;
        }
        p->merge_returns |= columns == 2;
    }
    if ((p->flush.count == 0) != (p->flushed.count == 0)) {
        tly_error(errbuf, errlen, "%s: @flush and @flushed go together", p->source_name);
        goto done;
    }
    bind_runtime(p, "allowed_lateness_ms", 0);
    bind_runtime(p, "closed_only", 0);
    bind_runtime(p, "windowed", 0);
    if (!(flags & TLY_PIPELINE_REPLAY_ONLY)) {
        if (p->stage.count == 0 || p->merge.count == 0) {
            tly_error(errbuf, errlen, "%s: needs @state and @fold sections (or @stage and @merge)",
                      p->source_name);
            goto done;
        }
        if (check_recorded_settings(p, errbuf, errlen) < 0)
            goto done;
    }
    if (sqlite3_prepare_v3(p->db, "SELECT seq FROM sqlite_sequence WHERE name = 'changelog'", -1,
                           SQLITE_PREPARE_PERSISTENT, &p->last_seq, NULL) != SQLITE_OK) {
        tly_error(errbuf, errlen, "%s", sqlite3_errmsg(p->db));
        goto done;
    }
    p->tokener = json_tokener_new_ex(64);
    if (!p->tokener) {
        tly_error(errbuf, errlen, "out of memory");
        goto done;
    }
    /* No JSON_TOKENER_VALIDATE_UTF8: tly_utf8_check, stricter, has already
     * passed every event json-c sees. */
    json_tokener_set_flags(p->tokener, JSON_TOKENER_STRICT);
    p->scan = tly_jsonscan_new();
    if (!p->scan) {
        tly_error(errbuf, errlen, "out of memory");
        goto done;
    }
    p->scan_enabled = true;
    snprintf(p->meta_applied, sizeof(p->meta_applied), "pipeline.%s.events_applied", p->name);
    snprintf(p->meta_skipped, sizeof(p->meta_skipped), "pipeline.%s.events_skipped", p->name);
    snprintf(p->meta_rejected, sizeof(p->meta_rejected), "pipeline.%s.events_rejected", p->name);
    snprintf(p->meta_late, sizeof(p->meta_late), "pipeline.%s.events_late", p->name);
    rc = 0;
done:
    for (int i = 0; i < SECTION_COUNT; i++)
        free(section_sql[i]);
    free(owned_text);
    if (rc == 0 && savepoint &&
        sqlite3_exec(p->db, "RELEASE tly_open", NULL, NULL, NULL) != SQLITE_OK)
        rc = tly_error(errbuf, errlen, "%s", sqlite3_errmsg(p->db));
    if (rc == 0) {
        *out = p;
    } else {
        sqlite3 *db = p->db;
        tly_pipeline_close(p);
        if (savepoint)
            sqlite3_exec(db, "ROLLBACK TO tly_open; RELEASE tly_open", NULL, NULL, NULL);
    }
    return rc;
}

int tly_pipeline_describe(const char *name, tly_pipeline_info *info, char *errbuf, size_t errlen)
{
    tly_pipeline *p = calloc(1, sizeof(*p));
    char *owned = NULL, *section_sql[SECTION_COUNT] = {0};
    const char *text;
    int rc = -1;

    memset(info, 0, sizeof(*info));
    if (!p)
        return tly_error(errbuf, errlen, "out of memory");
    if (!(text = load_source(p, name, &owned, errbuf, errlen)) ||
        parse_file(p, text, section_sql, errbuf, errlen) < 0)
        goto done;
    info->builtin = !owned;
    info->derived = section_sql[10][0] != '\0';
    if (section_sql[9][0]) {
        char *table = NULL;
        if (tly_derive_state_table(p->source_name, p->section_line[9], section_sql[9], &table,
                                   errbuf, errlen) < 0)
            goto done;
        snprintf(info->state_table, sizeof(info->state_table), "%s", table);
        free(table);
    }
    snprintf(info->name, sizeof(info->name), "%s", p->name);
    snprintf(info->source, sizeof(info->source), "%s", p->source_name);
    if (p->input_topic)
        snprintf(info->input_topic, sizeof(info->input_topic), "%s", p->input_topic);
    if (p->output_topic)
        snprintf(info->output_topic, sizeof(info->output_topic), "%s", p->output_topic);
    rc = 0;
done:
    for (int i = 0; i < SECTION_COUNT; i++)
        free(section_sql[i]);
    free(owned);
    tly_pipeline_close(p);
    return rc;
}

static void finalize_section(struct section *s)
{
    for (int i = 0; i < s->count; i++)
        sqlite3_finalize(s->statements[i].stmt);
    s->count = 0;
}

void tly_pipeline_close(tly_pipeline *p)
{
    if (!p)
        return;
    finalize_section(&p->check);
    finalize_section(&p->stage);
    finalize_section(&p->merge);
    finalize_section(&p->replay);
    finalize_section(&p->emit);
    finalize_section(&p->late);
    finalize_section(&p->flush);
    finalize_section(&p->flushed);
    sqlite3_finalize(p->last_seq);
    if (p->tokener)
        json_tokener_free(p->tokener);
    tly_jsonscan_free(p->scan);
    for (int i = 0; i < p->field_count; i++) {
        free(p->fields[i].param);
        free(p->fields[i].paths_text);
        for (int a = 0; a < p->fields[i].alternative_count; a++)
            free_path(&p->fields[i].alternatives[a]);
    }
    for (int i = 0; i < p->setting_count; i++) {
        free(p->settings[i].name);
        free(p->settings[i].value);
    }
    for (int i = 0; i < p->except_count; i++)
        free(p->except[i]);
    free_path(&p->each_path);
    free(p->each_key);
    free(p->each_value);
    free(p->members);
    free(p->name);
    free(p->entity);
    free(p->input_topic);
    free(p->output_topic);
    free(p->source_name);
    tly_derived_free(&p->derivation);
    free(p->records);
    free(p->text);
    free(p);
}

const char *tly_pipeline_name(const tly_pipeline *p)
{
    return p->name;
}
const char *tly_pipeline_entity(const tly_pipeline *p)
{
    return p->entity;
}

void tly_pipeline_set_fast_json(tly_pipeline *p, bool on)
{
    p->scan_enabled = on;
}

int64_t tly_pipeline_fast_json_events(const tly_pipeline *p)
{
    return p->scanned_events;
}

/* ------------------------------------------------------------------------ */
/* Decoding one event                                                        */
/* ------------------------------------------------------------------------ */

static json_object *lookup(json_object *root, const struct path *path)
{
    json_object *node = root;
    for (int i = 0; i < path->segment_count; i++) {
        if (!json_object_is_type(node, json_type_object) ||
            !json_object_object_get_ex(node, path->segments[i], &node))
            return NULL;
    }
    return node;
}

static const char *json_type_label(json_object *o)
{
    return o ? json_type_to_name(json_object_get_type(o)) : "null";
}

/* A field's JSON value as either reader gives it (json-c's tree or the fast
 * reader's nodes), so that both decode through the same rules. */
struct jval {
    enum json_type type;
    int64_t i;        /* json_type_int: json-c's int64 (saturated beyond) */
    bool b;           /* json_type_boolean */
    const char *text; /* string: its bytes, double: its text as written, both
                         NUL-terminated; @field json: the value's JSON text */
    size_t len;       /* of text: a string's length (json-c's, NULs counted),
                         else strlen(text) */
};

/* json-c saturates integers outside int64; its saturated values are the only
 * ones that can mean "too large", and no field accepts them. */
static int get_int64(const struct jval *o, int64_t *out)
{
    int64_t v = o->i;
    if (v == INT64_MAX || v == INT64_MIN)
        return -1;
    *out = v;
    return 0;
}

typedef enum { DECODE_OK, DECODE_SKIP, DECODE_REJECT } decode_result;

/* Decodes field f from its value o (NULL: absent or null). */
static decode_result decode_value(const struct field *f, const struct jval *o, struct value *v,
                                  char *reason, size_t reason_len)
{
    enum json_type type;

    v->kind = V_NULL;
    if (!o) {
        if (f->mode == FM_OPTIONAL)
            return DECODE_OK;
        snprintf(reason, reason_len, "missing field \"%s\"", f->paths_text);
        return DECODE_REJECT;
    }
    type = o->type;
    switch (f->type) {
    case FT_ID:
        if (type == json_type_int) {
            int64_t n;
            if (get_int64(o, &n) < 0)
                goto out_of_range;
            v->kind = V_TEXT;
            v->text_len = snprintf(v->buf, sizeof(v->buf), "%lld", (long long)n);
            v->text = v->buf;
            return DECODE_OK;
        }
        __attribute__((fallthrough)); /* otherwise it must be a string */
    case FT_TEXT:
        if (type != json_type_string)
            goto wrong_type;
        v->kind = V_TEXT;
        v->text = o->text;
        v->text_len = (int)o->len;
        if (v->text_len == 0 && f->mode == FM_SKIP_EMPTY) {
            snprintf(reason, reason_len, "empty %s", f->paths_text);
            return DECODE_SKIP;
        }
        if (v->text_len == 0 && f->type == FT_ID) {
            snprintf(reason, reason_len, "field \"%s\" is empty", f->paths_text);
            return DECODE_REJECT;
        }
        return DECODE_OK;
    case FT_INT:
    case FT_TIME_MS:
        if (type != json_type_int)
            goto wrong_type;
        if (get_int64(o, &v->i) < 0)
            goto out_of_range;
        if (f->type == FT_TIME_MS && (v->i < 0 || v->i > MAX_TIME_MS)) {
            snprintf(reason, reason_len,
                     "field \"%s\" is %lld, not epoch milliseconds between "
                     "0 and %lld",
                     f->paths_text, (long long)v->i, MAX_TIME_MS);
            return DECODE_REJECT;
        }
        v->kind = V_INT;
        return DECODE_OK;
    case FT_DECIMAL6: {
        char err[128];
        const char *text;
        if (type == json_type_int) {
            if (get_int64(o, &v->i) < 0 || v->i > INT64_MAX / 1000000 || v->i < INT64_MIN / 1000000)
                goto out_of_range;
            v->i *= 1000000;
            v->kind = V_INT;
            return DECODE_OK;
        }
        if (type != json_type_double && type != json_type_string)
            goto wrong_type;
        /* For a JSON number json-c keeps the text as written, which is what makes
         * exactness possible. */
        text = o->text;
        if (tly_decimal_parse(text, strlen(text), 6, &v->i, err, sizeof(err)) < 0) {
            snprintf(reason, reason_len, "field \"%s\": %s", f->paths_text, err);
            return DECODE_REJECT;
        }
        v->kind = V_INT;
        return DECODE_OK;
    }
    case FT_TIME_ANY: {
        char err[160];
        const char *text;
        size_t len;
        if (type == json_type_int) {
            /* json-c formats an integer from its value: the saturated
             * values must be caught here */
            if (get_int64(o, &v->i) < 0)
                goto out_of_range;
            len = (size_t)snprintf(v->buf, sizeof(v->buf), "%lld", (long long)v->i);
            text = v->buf;
        } else if (type == json_type_double || type == json_type_string) {
            /* a double keeps the text as written, so nothing is rounded */
            text = o->text;
            len = o->len;
        } else {
            goto wrong_type;
        }
        if (tly_timestamp_parse(text, len, &v->i, err, sizeof(err)) < 0) {
            snprintf(reason, reason_len, "field \"%s\": %s", f->paths_text, err);
            return DECODE_REJECT;
        }
        v->kind = V_INT;
        return DECODE_OK;
    }
    case FT_BOOL:
        if (type != json_type_boolean)
            goto wrong_type;
        v->kind = V_INT;
        v->i = o->b ? 1 : 0;
        return DECODE_OK;
    case FT_JSON:
        v->kind = V_TEXT;
        v->text = o->text;
        v->text_len = (int)o->len;
        return DECODE_OK;
    }
wrong_type : {
    static const char *expected[] = {"a string or integer",
                                     "a string",
                                     "an integer",
                                     "a number or decimal string",
                                     "an integer (epoch ms)",
                                     "true or false",
                                     "JSON",
                                     "epoch ms, epoch seconds or an RFC 3339 string"};
    snprintf(reason, reason_len, "field \"%s\" must be %s, got %s", f->paths_text,
             expected[f->type], json_type_to_name(o->type));
    return DECODE_REJECT;
}
out_of_range:
    snprintf(reason, reason_len, "field \"%s\" is out of range (beyond a 64-bit integer)",
             f->paths_text);
    return DECODE_REJECT;
}

static bool is_excepted(tly_pipeline *p, const char *key, size_t len)
{
    for (int i = 0; i < p->except_count; i++)
        if (strncmp(p->except[i], key, len) == 0 && p->except[i][len] == '\0')
            return true;
    return false;
}

/* Decodes field f from json-c's tree. */
static decode_result decode_field(const struct field *f, json_object *root, struct value *v,
                                  char *reason, size_t reason_len)
{
    json_object *o = NULL;
    struct jval jv;

    for (int a = 0; a < f->alternative_count && !o; a++)
        o = lookup(root, &f->alternatives[a]);
    if (!o)
        return decode_value(f, NULL, v, reason, reason_len);
    jv.type = json_object_get_type(o);
    jv.i = jv.type == json_type_int ? json_object_get_int64(o) : 0;
    jv.b = jv.type == json_type_boolean && json_object_get_boolean(o);
    jv.text = NULL;
    jv.len = 0;
    if (f->type == FT_JSON) {
        jv.text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
                                                        JSON_C_TO_STRING_NOSLASHESCAPE);
        jv.len = strlen(jv.text);
    } else if (jv.type == json_type_string) {
        jv.text = json_object_get_string(o);
        jv.len = (size_t)json_object_get_string_len(o);
    } else if (jv.type == json_type_double) {
        jv.text = json_object_get_string(o);
        jv.len = strlen(jv.text);
    }
    return decode_value(f, &jv, v, reason, reason_len);
}

/* The fast reader's node at dot path `path`, as lookup() finds it in json-c's
 * tree: -1 when absent or null, or when a step is not an object. */
static int scan_lookup(tly_jsonscan *scan, const struct path *path)
{
    int node = 0;
    for (int i = 0; i < path->segment_count && node >= 0; i++)
        node = tly_jsonscan_member(scan, node, path->segments[i]);
    return node >= 0 && tly_jsonscan_node(scan, node)->type != TLY_J_NULL ? node : -1;
}

/* Decodes every field of an event with the fast reader. Returns 0 when each
 * decoded to a value (sets *members to the @each object's node), or -1 when
 * json-c is to decode the event: the reader declined the text, a field is
 * rejected or skipped (json-c then gives the reason), or a value json-c would
 * print otherwise than it is written is bound as JSON. Never a verdict of
 * its own. */
static int scan_event(tly_pipeline *p, const tly_event *ev, struct value *values, int *members)
{
    static const enum json_type types[] = {
        [TLY_J_NULL] = json_type_null,     [TLY_J_BOOL] = json_type_boolean,
        [TLY_J_INT] = json_type_int,       [TLY_J_DOUBLE] = json_type_double,
        [TLY_J_STRING] = json_type_string, [TLY_J_OBJECT] = json_type_object,
        [TLY_J_ARRAY] = json_type_array};
    char reason[sizeof(((tly_event_result *)0)->reason)];

    if (tly_jsonscan_read(p->scan, ev->data, ev->len) < 0)
        return -1;
    for (int f = 0; f < p->field_count; f++) {
        const struct field *field = &p->fields[f];
        const tly_jnode *n;
        struct jval jv;
        int node = -1;

        for (int a = 0; a < field->alternative_count && node < 0; a++)
            node = scan_lookup(p->scan, &field->alternatives[a]);
        if (node < 0) {
            if (decode_value(field, NULL, &values[f], reason, sizeof(reason)) != DECODE_OK)
                return -1;
            continue;
        }
        n = tly_jsonscan_node(p->scan, node);
        jv.type = types[n->type];
        jv.i = n->i;
        jv.b = n->b;
        jv.text = NULL;
        jv.len = 0;
        if (field->type == FT_JSON) {
            if (!(n->flags & TLY_JNODE_CANONICAL))
                return -1;
            jv.text = n->raw;
            jv.len = n->raw_len;
        } else if (n->type == TLY_J_STRING || n->type == TLY_J_DOUBLE) {
            jv.text = tly_jsonscan_text(p->scan, node, &jv.len);
        }
        if (decode_value(field, &jv, &values[f], reason, sizeof(reason)) != DECODE_OK)
            return -1;
    }
    *members = -1;
    if (p->has_each) {
        const tly_jnode *n;
        *members = scan_lookup(p->scan, &p->each_path);
        if (*members < 0 || tly_jsonscan_node(p->scan, *members)->type != TLY_J_OBJECT)
            return -1;
        for (int m = tly_jsonscan_node(p->scan, *members)->child; m >= 0; m = n->next) {
            n = tly_jsonscan_node(p->scan, m);
            if (!(n->flags & TLY_JNODE_CANONICAL) && !is_excepted(p, n->key, n->key_len))
                return -1;
        }
    }
    p->scanned_events++;
    return 0;
}

/* Checks what both readers need of an event: its size, no NUL, valid UTF-8.
 * Returns 0, or -1 with a reason. */
static int check_event(const tly_event *ev, char *reason, size_t reason_len)
{
    size_t end;
    if (ev->len > TLY_MAX_EVENT_BYTES) {
        snprintf(reason, reason_len, "event is %zu bytes, over the %d-byte limit", ev->len,
                 TLY_MAX_EVENT_BYTES);
        return -1;
    }
    if (memchr(ev->data, '\0', ev->len)) {
        snprintf(reason, reason_len, "invalid JSON: NUL byte in event");
        return -1;
    }
    if ((end = tly_utf8_check(ev->data, ev->len)) != ev->len) {
        snprintf(reason, reason_len, "invalid UTF-8 at byte %zu", end);
        return -1;
    }
    return 0;
}

/* Parses one event, checked by check_event, into a json-c tree; returns NULL
 * with a reason. */
static json_object *parse_event(tly_pipeline *p, const tly_event *ev, char *reason,
                                size_t reason_len)
{
    json_object *root;
    size_t end;
    bool consumed_whole = false;

    json_tokener_reset(p->tokener);
    root = json_tokener_parse_ex(p->tokener, ev->data, (int)ev->len);
    /* A bare number at the very end ("42") is still open to json-c: a space
     * tells it the input is over. */
    if (!root && json_tokener_get_error(p->tokener) == json_tokener_continue) {
        root = json_tokener_parse_ex(p->tokener, " ", 1);
        consumed_whole = true;
    }
    if (!root) {
        enum json_tokener_error e = json_tokener_get_error(p->tokener);
        if (e == json_tokener_success)
            snprintf(reason, reason_len, "event must be a JSON object, got null");
        else if (e == json_tokener_continue)
            snprintf(reason, reason_len, "invalid JSON: truncated or empty");
        else
            snprintf(reason, reason_len, "invalid JSON: %s at byte %zu", json_tokener_error_desc(e),
                     json_tokener_get_parse_end(p->tokener));
        return NULL;
    }
    for (end = consumed_whole ? ev->len : json_tokener_get_parse_end(p->tokener); end < ev->len;
         end++) {
        char c = ev->data[end];
        if (c != ' ' && c != '\t' && c != '\r' && c != '\n') {
            snprintf(reason, reason_len,
                     "invalid JSON: unexpected data after the value at byte %zu", end);
            json_object_put(root);
            return NULL;
        }
    }
    if (!json_object_is_type(root, json_type_object)) {
        snprintf(reason, reason_len, "event must be a JSON object, got %s", json_type_label(root));
        json_object_put(root);
        return NULL;
    }
    return root;
}

static void bind_value(sqlite3_stmt *stmt, int index, const struct value *v)
{
    switch (v->kind) {
    case V_NULL: sqlite3_bind_null(stmt, index); break;
    case V_INT: sqlite3_bind_int64(stmt, index, v->i); break;
    case V_TEXT: sqlite3_bind_text(stmt, index, v->text, v->text_len, SQLITE_STATIC); break;
    }
}

static void bind_fields(tly_pipeline *p, struct section *s, const struct value *values,
                        const tly_event *ev)
{
    for (int k = 0; k < s->count; k++) {
        for (int f = 0; f < p->field_count; f++)
            if (s->statements[k].field_index[f])
                bind_value(s->statements[k].stmt, s->statements[k].field_index[f], &values[f]);
        if (s->statements[k].event_index)
            sqlite3_bind_text(s->statements[k].stmt, s->statements[k].event_index, ev->data,
                              (int)ev->len, SQLITE_STATIC);
        if (s->statements[k].partition_index)
            sqlite3_bind_int(s->statements[k].stmt, s->statements[k].partition_index,
                             ev->partition);
    }
}

/* Runs every statement of a section once. Returns SQLITE_DONE or the error. */
static int run_section(struct section *s)
{
    for (int k = 0; k < s->count; k++) {
        sqlite3_stmt *stmt = s->statements[k].stmt;
        int rc;
        while ((rc = sqlite3_step(stmt)) == SQLITE_ROW)
            ;
        sqlite3_reset(stmt);
        if (rc != SQLITE_DONE)
            return rc;
    }
    return SQLITE_DONE;
}

/* Runs the SELECTs of @check or @late for one event: the first non-NULL first
 * column is why the event gets `verdict` instead of being applied. Returns
 * SQLITE_DONE or the error of a statement. */
static int run_verdicts(tly_pipeline *p, struct section *s, const struct value *values,
                        const tly_event *ev, tly_event_status verdict, tly_event_result *result)
{
    bind_fields(p, s, values, ev);
    for (int k = 0; k < s->count; k++) {
        sqlite3_stmt *stmt = s->statements[k].stmt;
        int rc = sqlite3_step(stmt);
        if (rc == SQLITE_ROW && sqlite3_column_type(stmt, 0) != SQLITE_NULL) {
            snprintf(result->reason, sizeof(result->reason), "%s", sqlite3_column_text(stmt, 0));
            result->status = verdict;
        }
        sqlite3_reset(stmt);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE)
            return rc;
        if (result->status != TLY_EVENT_APPLIED)
            break;
    }
    return SQLITE_DONE;
}

/* Appends one member to p->members. Returns 0, or -1 when out of memory. */
static int add_member(tly_pipeline *p, const char *key, size_t key_len, const char *value,
                      size_t value_len)
{
    tly_member *m;
    if (p->member_list.count == p->member_cap) {
        int cap = p->member_cap ? p->member_cap * 2 : 64;
        tly_member *grown = realloc(p->members, (size_t)cap * sizeof(*grown));
        if (!grown)
            return -1;
        p->members = grown;
        p->member_cap = cap;
    }
    m = &p->members[p->member_list.count++];
    m->key = key;
    m->key_len = (int)key_len;
    m->value = value;
    m->value_len = (int)value_len;
    p->member_list.members = p->members;
    return 0;
}

/* The event's @each members, those not excepted, in the event's order, into
 * p->member_list for tly_each: from the fast reader's nodes (scan, with the
 * object at node `scanned`) or from json-c's object `members`, with the same
 * texts the per-member statements are bound to. Returns 0, or -1 when out of
 * memory. */
static int collect_members(tly_pipeline *p, tly_jsonscan *scan, int scanned, json_object *members)
{
    p->member_list.count = 0;
    p->member_list.members = p->members;
    if (scan) {
        const tly_jnode *n;
        for (int m = tly_jsonscan_node(scan, scanned)->child; m >= 0; m = n->next) {
            n = tly_jsonscan_node(scan, m);
            if (!is_excepted(p, n->key, n->key_len) &&
                add_member(p, n->key, n->key_len, n->raw, n->raw_len) < 0)
                return -1;
        }
        return 0;
    }
    json_object_object_foreach(members, key, member)
    {
        const char *member_json;
        if (is_excepted(p, key, strlen(key)))
            continue;
        member_json = json_object_to_json_string_ext(member, JSON_C_TO_STRING_PLAIN |
                                                                 JSON_C_TO_STRING_NOSLASHESCAPE);
        if (add_member(p, key, strlen(key), member_json, strlen(member_json)) < 0)
            return -1;
    }
    return 0;
}

/* Runs @check, @late (windowed) and @stage for one event. Returns SQLITE_DONE when it was staged
 * (or skipped/rejected, see result), else the SQLite error of a statement. */
static int stage_event(tly_pipeline *p, const tly_event *ev, tly_event_result *result)
{
    struct value values[MAX_FIELDS];
    json_object *root = NULL, *members = NULL;
    int scanned_members = -1;
    int rc = SQLITE_DONE;

    result->status = TLY_EVENT_APPLIED;
    result->reason[0] = '\0';
    if (check_event(ev, result->reason, sizeof(result->reason)) < 0) {
        result->status = TLY_EVENT_REJECTED;
        return SQLITE_DONE;
    }
    if (p->scan_enabled && scan_event(p, ev, values, &scanned_members) == 0)
        goto decoded;
    root = parse_event(p, ev, result->reason, sizeof(result->reason));
    if (!root) {
        result->status = TLY_EVENT_REJECTED;
        return SQLITE_DONE;
    }
    for (int f = 0; f < p->field_count; f++) {
        decode_result d =
            decode_field(&p->fields[f], root, &values[f], result->reason, sizeof(result->reason));
        if (d != DECODE_OK) {
            result->status = d == DECODE_SKIP ? TLY_EVENT_SKIPPED : TLY_EVENT_REJECTED;
            goto done;
        }
    }
decoded:
    if ((rc = run_verdicts(p, &p->check, values, ev, TLY_EVENT_REJECTED, result)) != SQLITE_DONE ||
        result->status != TLY_EVENT_APPLIED)
        goto done;
    if (p->has_each && root) {
        members = lookup(root, &p->each_path);
        if (!json_object_is_type(members, json_type_object)) {
            snprintf(result->reason, sizeof(result->reason),
                     "field \"%s\" must be an object, got %s", p->each_path.segments[0],
                     members ? json_type_label(members) : "nothing");
            result->status = TLY_EVENT_REJECTED;
            goto done;
        }
    }
    /* Last of the verdicts: an event found not late moves the clock. */
    if (p->windowed &&
        ((rc = run_verdicts(p, &p->late, values, ev, TLY_EVENT_LATE, result)) != SQLITE_DONE ||
         result->status != TLY_EVENT_APPLIED))
        goto done;
    bind_fields(p, &p->stage, values, ev);
    if (p->derived)
        tly_derive_fold_begin(p->db, &p->derivation, ev->partition);
    if (!p->has_each) {
        rc = run_section(&p->stage);
        goto done;
    }
    if (p->stage_per_event) {
        if (collect_members(p, root ? NULL : p->scan, scanned_members, members) < 0) {
            rc = SQLITE_NOMEM;
            goto done;
        }
        for (int k = 0; k < p->stage.count; k++) {
            struct bound_statement *b = &p->stage.statements[k];
            sqlite3_bind_pointer(b->stmt, b->each_members_index, &p->member_list,
                                 TLY_MEMBERS_POINTER, NULL);
        }
        rc = run_section(&p->stage);
        goto done;
    }
    if (!root) {
        /* the fast reader's members: their text as written is what json-c
         * would print (scan_event checked) */
        const tly_jnode *n;
        for (int m = tly_jsonscan_node(p->scan, scanned_members)->child; m >= 0; m = n->next) {
            n = tly_jsonscan_node(p->scan, m);
            if (is_excepted(p, n->key, n->key_len))
                continue;
            for (int k = 0; k < p->stage.count; k++) {
                struct bound_statement *b = &p->stage.statements[k];
                if (b->each_key_index)
                    sqlite3_bind_text(b->stmt, b->each_key_index, n->key, (int)n->key_len,
                                      SQLITE_STATIC);
                if (b->each_value_index)
                    sqlite3_bind_text(b->stmt, b->each_value_index, n->raw, (int)n->raw_len,
                                      SQLITE_STATIC);
            }
            rc = run_section(&p->stage);
            if (rc != SQLITE_DONE)
                goto done;
        }
        goto done;
    }
    json_object_object_foreach(members, key, member)
    {
        const char *member_json;
        if (is_excepted(p, key, strlen(key)))
            continue;
        member_json = json_object_to_json_string_ext(member, JSON_C_TO_STRING_PLAIN |
                                                                 JSON_C_TO_STRING_NOSLASHESCAPE);
        for (int k = 0; k < p->stage.count; k++) {
            struct bound_statement *b = &p->stage.statements[k];
            if (b->each_key_index)
                sqlite3_bind_text(b->stmt, b->each_key_index, key, -1, SQLITE_STATIC);
            if (b->each_value_index)
                sqlite3_bind_text(b->stmt, b->each_value_index, member_json, -1, SQLITE_STATIC);
        }
        rc = run_section(&p->stage);
        if (rc != SQLITE_DONE)
            goto done;
    }
done:
    if (p->derived)
        tly_derive_fold_end(p->db);
    if (root)
        json_object_put(root);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Batches                                                                   */
/* ------------------------------------------------------------------------ */

/* Errors that belong to one event's data, as opposed to the database itself. */
static bool is_event_error(int rc)
{
    int primary = rc & 0xff;
    return primary == SQLITE_CONSTRAINT || primary == SQLITE_MISMATCH || primary == SQLITE_TOOBIG ||
           primary == SQLITE_ERROR || primary == SQLITE_RANGE;
}

static int64_t last_seq(tly_pipeline *p)
{
    int64_t seq = 0;
    if (sqlite3_step(p->last_seq) == SQLITE_ROW)
        seq = sqlite3_column_int64(p->last_seq, 0);
    sqlite3_reset(p->last_seq);
    return seq;
}

static int exec(tly_pipeline *p, const char *sql)
{
    return sqlite3_exec(p->db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : -1;
}

/* Appends one (key, value) row of a @merge RETURNING clause. */
static int keep_output(tly_pipeline *p, sqlite3_stmt *stmt)
{
    const char *key = (const char *)sqlite3_column_text(stmt, 0);
    size_t key_len = (size_t)sqlite3_column_bytes(stmt, 0);
    const char *value = (const char *)sqlite3_column_text(stmt, 1);
    size_t value_len = (size_t)sqlite3_column_bytes(stmt, 1);
    struct merge_output *o;

    if (!key || !value)
        return SQLITE_MISMATCH; /* a NULL key or value: the event's data */
    if (p->record_count == p->record_cap) {
        size_t cap = p->record_cap ? p->record_cap * 2 : 1024;
        struct merge_output *grown = realloc(p->records, cap * sizeof(*grown));
        if (!grown)
            return SQLITE_NOMEM;
        p->records = grown;
        p->record_cap = cap;
    }
    if (p->text_len + key_len + value_len > p->text_cap) {
        size_t cap = p->text_cap ? p->text_cap : 65536;
        char *grown;
        while (cap < p->text_len + key_len + value_len)
            cap *= 2;
        if (!(grown = realloc(p->text, cap)))
            return SQLITE_NOMEM;
        p->text = grown;
        p->text_cap = cap;
    }
    o = &p->records[p->record_count++];
    o->key = p->text_len;
    o->key_len = key_len;
    memcpy(p->text + p->text_len, key, key_len);
    p->text_len += key_len;
    o->value = p->text_len;
    o->value_len = value_len;
    memcpy(p->text + p->text_len, value, value_len);
    p->text_len += value_len;
    return SQLITE_OK;
}

/* @merge; a derived one first learns the keys @fold marked. The rows of a
 * RETURNING clause are kept as the batch's outputs. */
static int run_merge(tly_pipeline *p)
{
    int rc;
    if (p->derived && (rc = tly_derive_stage_marks(&p->derivation)) != SQLITE_DONE)
        return rc;
    if (!p->merge_returns)
        return run_section(&p->merge);
    for (int k = 0; k < p->merge.count; k++) {
        sqlite3_stmt *stmt = p->merge.statements[k].stmt;
        while ((rc = sqlite3_step(stmt)) == SQLITE_ROW)
            if ((rc = keep_output(p, stmt)) != SQLITE_OK)
                break;
        sqlite3_reset(stmt);
        if (rc != SQLITE_DONE)
            return rc;
    }
    return SQLITE_DONE;
}

/* Rolls back to savepoint `name`; a derived pipeline's marks go with it. */
static int rollback_to(tly_pipeline *p, const char *sql)
{
    if (p->derived)
        tly_derive_forget_marks(&p->derivation);
    return exec(p, sql);
}

/* The fallback when a statement failed on some event: each event under its own
 * savepoint with its own merge, so the failing one is rejected alone. */
static int apply_one_by_one(tly_pipeline *p, const tly_event *events, size_t count,
                            tly_event_result *results, char *errbuf, size_t errlen)
{
    p->outputs_repeated = true;
    for (size_t i = 0; i < count; i++) {
        size_t records_before = p->record_count, text_before = p->text_len;
        int rc;
        if (exec(p, "SAVEPOINT tly_event") < 0)
            goto fatal;
        rc = stage_event(p, &events[i], &results[i]);
        if (rc == SQLITE_DONE && results[i].status == TLY_EVENT_APPLIED)
            rc = run_merge(p);
        if (rc != SQLITE_DONE) {
            if (!is_event_error(rc))
                goto fatal;
            results[i].status = TLY_EVENT_REJECTED;
            snprintf(results[i].reason, sizeof(results[i].reason), "rejected by the database: %s",
                     sqlite3_errmsg(p->db));
            p->record_count = records_before;
            p->text_len = text_before;
            if (rollback_to(p, "ROLLBACK TO tly_event") < 0)
                goto fatal;
        }
        if (exec(p, "RELEASE tly_event") < 0)
            goto fatal;
    }
    return 0;
fatal:
    return tly_error(errbuf, errlen, "database error while applying: %s", sqlite3_errmsg(p->db));
}

/* The same counters per input partition, "pipeline.<name>.p<N>.events_<x>":
 * they move with the partition's rows when another instance takes it over
 * (the daemon mirrors them in the changelog's tally.counters rows), and the
 * pipeline's totals are their sum over the partitions a database holds. All
 * four are written for a partition the batch touched, so every partition's
 * counters row has the same members. */
static int count_partitions(tly_pipeline *p, const tly_event *events,
                            const tly_event_result *results, size_t count)
{
    static const char *const names[] = {"applied", "skipped", "rejected", "late"};
    /* one pass: a batch holds few partitions, found by a linear search
     * from the last one seen (events come in runs of one partition) */
    struct {
        int partition;
        int64_t n[4];
    } seen[64];
    int nseen = 0, last = -1;

    for (size_t i = 0; i < count; i++) {
        int k = last >= 0 && seen[last].partition == events[i].partition ? last : -1;
        for (int j = 0; k < 0 && j < nseen; j++)
            if (seen[j].partition == events[i].partition)
                k = j;
        if (k < 0) {
            if (nseen == (int)(sizeof(seen) / sizeof(*seen))) {
                /* more partitions than that in one batch: count what we
                 * have, then go on with the rest */
                return count_partitions(p, events, results, i) < 0
                           ? -1
                           : count_partitions(p, events + i, results + i, count - i);
            }
            k = nseen++;
            seen[k].partition = events[i].partition;
            memset(seen[k].n, 0, sizeof(seen[k].n));
        }
        last = k;
        switch (results[i].status) {
        case TLY_EVENT_APPLIED: seen[k].n[0]++; break;
        case TLY_EVENT_SKIPPED: seen[k].n[1]++; break;
        case TLY_EVENT_LATE: seen[k].n[3]++; break;
        default: seen[k].n[2]++; break;
        }
    }
    for (int j = 0; j < nseen; j++)
        for (int k = 0; k < 4; k++) {
            char key[160];
            snprintf(key, sizeof(key), "pipeline.%s.p%d.events_%s", p->name, seen[j].partition,
                     names[k]);
            if (tly_store_meta_add_int(p->store, key, seen[j].n[k]) < 0)
                return -1;
        }
    return 0;
}

int tly_pipeline_apply(tly_pipeline *p, const tly_event *events, size_t count,
                       tly_event_result *results, tly_batch_stats *stats, char *errbuf,
                       size_t errlen)
{
    tly_batch_stats local = {0};
    int64_t seq_before;
    int rc = SQLITE_DONE;

    if (exec(p, "SAVEPOINT tly_batch") < 0)
        return tly_error(errbuf, errlen, "cannot start batch: %s", sqlite3_errmsg(p->db));
    seq_before = last_seq(p);
    p->outputs_valid = false;
    p->outputs_repeated = false;
    p->record_count = 0;
    p->text_len = 0;
    if (p->derived)
        tly_derive_forget_marks(&p->derivation);
    for (size_t i = 0; i < count && rc == SQLITE_DONE; i++)
        rc = stage_event(p, &events[i], &results[i]);
    if (rc == SQLITE_DONE)
        rc = run_merge(p);
    if (rc != SQLITE_DONE) {
        if (!is_event_error(rc)) {
            tly_error(errbuf, errlen, "database error while applying: %s", sqlite3_errmsg(p->db));
            goto fatal;
        }
        p->record_count = 0;
        p->text_len = 0;
        if (rollback_to(p, "ROLLBACK TO tly_batch") < 0 ||
            apply_one_by_one(p, events, count, results, errbuf, errlen) < 0)
            goto fatal;
    }
    for (size_t i = 0; i < count; i++) {
        if (results[i].status == TLY_EVENT_APPLIED)
            local.applied++;
        else if (results[i].status == TLY_EVENT_SKIPPED)
            local.skipped++;
        else if (results[i].status == TLY_EVENT_LATE)
            local.late++;
        else
            local.rejected++;
    }
    local.changes = last_seq(p) - seq_before;
    p->outputs_from = seq_before;
    p->outputs_to = seq_before + local.changes;
    if ((local.applied && tly_store_meta_add_int(p->store, p->meta_applied, local.applied) < 0) ||
        (local.skipped && tly_store_meta_add_int(p->store, p->meta_skipped, local.skipped) < 0) ||
        (local.rejected &&
         tly_store_meta_add_int(p->store, p->meta_rejected, local.rejected) < 0) ||
        (local.late && tly_store_meta_add_int(p->store, p->meta_late, local.late) < 0) ||
        count_partitions(p, events, results, count) < 0) {
        tly_error(errbuf, errlen, "cannot update counters: %s", sqlite3_errmsg(p->db));
        goto fatal;
    }
    if (exec(p, "RELEASE tly_batch") < 0) {
        tly_error(errbuf, errlen, "cannot finish batch: %s", sqlite3_errmsg(p->db));
        goto fatal;
    }
    p->outputs_valid = p->merge_returns;
    if (stats)
        *stats = local;
    return 0;
fatal:
    rollback_to(p, "ROLLBACK TO tly_batch");
    exec(p, "RELEASE tly_batch");
    return -1;
}

int tly_pipeline_replay_image(tly_pipeline *p, const char *image, int64_t key_seq, int partition,
                              int *changed, char *errbuf, size_t errlen)
{
    p->outputs_valid = false; /* the state moved: @emit reads it again */
    int total = 0;            /* the first statement's: the others maintain derived tables */
    if (p->replay.count == 0)
        return tly_error(errbuf, errlen, "%s has no @replay section", p->source_name);
    for (int k = 0; k < p->replay.count; k++) {
        sqlite3_stmt *stmt = p->replay.statements[k].stmt;
        int index, rc;
        if ((index = sqlite3_bind_parameter_index(stmt, ":image")))
            sqlite3_bind_text(stmt, index, image, -1, SQLITE_STATIC);
        if ((index = sqlite3_bind_parameter_index(stmt, ":key_seq")))
            sqlite3_bind_int64(stmt, index, key_seq);
        if ((index = sqlite3_bind_parameter_index(stmt, ":partition")))
            sqlite3_bind_int(stmt, index, partition);
        while ((rc = sqlite3_step(stmt)) == SQLITE_ROW)
            ;
        sqlite3_reset(stmt);
        if (rc != SQLITE_DONE)
            return tly_error(errbuf, errlen, "%s @replay: %s", p->source_name,
                             sqlite3_errmsg(p->db));
        if (k == 0)
            total = sqlite3_changes(p->db);
    }
    *changed = total > 0;
    return 0;
}

/* Steps an output SELECT (@emit, @flush): binds :now_ms, passes each (key,
 * value) row to fn. */
static int run_outputs(tly_pipeline *p, const char *section_name, sqlite3_stmt *stmt,
                       tly_emit_fn fn, void *ctx, char *errbuf, size_t errlen)
{
    int index, rc;
    if ((index = sqlite3_bind_parameter_index(stmt, ":now_ms"))) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        sqlite3_bind_int64(stmt, index, (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
    }
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        const char *key = (const char *)sqlite3_column_text(stmt, 0);
        size_t key_len = (size_t)sqlite3_column_bytes(stmt, 0);
        const char *value = (const char *)sqlite3_column_text(stmt, 1);
        size_t value_len = (size_t)sqlite3_column_bytes(stmt, 1);
        if (fn(ctx, key, key_len, value, value_len) != 0) {
            sqlite3_reset(stmt);
            return tly_error(errbuf, errlen, "%s @%s: stopped by the caller", p->source_name,
                             section_name);
        }
    }
    sqlite3_reset(stmt);
    if (rc != SQLITE_DONE)
        return tly_error(errbuf, errlen, "%s @%s: %s", p->source_name, section_name,
                         sqlite3_errmsg(p->db));
    return 0;
}

static int compare_outputs(const void *a, const void *b, void *text)
{
    const struct merge_output *x = a, *y = b;
    size_t n = x->key_len < y->key_len ? x->key_len : y->key_len;
    int c = memcmp((char *)text + x->key, (char *)text + y->key, n);
    if (c)
        return c;
    if (x->key_len != y->key_len)
        return x->key_len < y->key_len ? -1 : 1;
    return x->key < y->key ? -1 : x->key > y->key; /* later in the batch sorts last */
}

/* The outputs the last apply's @merge RETURNed, one per key (the last, when
 * the batch went one event at a time). */
static int emit_merge_outputs(tly_pipeline *p, tly_emit_fn fn, void *ctx, char *errbuf,
                              size_t errlen)
{
    if (p->outputs_repeated && p->record_count > 1)
        qsort_r(p->records, p->record_count, sizeof(*p->records), compare_outputs, p->text);
    for (size_t i = 0; i < p->record_count; i++) {
        const struct merge_output *o = &p->records[i];
        if (p->outputs_repeated && i + 1 < p->record_count &&
            o->key_len == p->records[i + 1].key_len &&
            memcmp(p->text + o->key, p->text + p->records[i + 1].key, o->key_len) == 0)
            continue;
        if (fn(ctx, p->text + o->key, o->key_len, p->text + o->value, o->value_len) != 0)
            return tly_error(errbuf, errlen, "%s @merge: stopped by the caller", p->source_name);
    }
    return 0;
}

int tly_pipeline_emit(tly_pipeline *p, int64_t from_seq, int64_t to_seq, tly_emit_fn fn, void *ctx,
                      char *errbuf, size_t errlen)
{
    /* What follows the last apply's rows up to to_seq was written by others
     * (the daemon's counters rows): @emit selects this entity's rows only. */
    if (p->outputs_valid && from_seq == p->outputs_from && to_seq >= p->outputs_to &&
        to_seq <= last_seq(p))
        return emit_merge_outputs(p, fn, ctx, errbuf, errlen);
    for (int k = 0; k < p->emit.count; k++) {
        sqlite3_stmt *stmt = p->emit.statements[k].stmt;
        int index;
        if ((index = sqlite3_bind_parameter_index(stmt, ":from_seq")))
            sqlite3_bind_int64(stmt, index, from_seq);
        if ((index = sqlite3_bind_parameter_index(stmt, ":to_seq")))
            sqlite3_bind_int64(stmt, index, to_seq);
        if (run_outputs(p, "emit", stmt, fn, ctx, errbuf, errlen) < 0)
            return -1;
    }
    return 0;
}

bool tly_pipeline_has_flush(const tly_pipeline *p)
{
    return p->flush.count > 0;
}

int tly_pipeline_set_windowed(tly_pipeline *p, bool windowed, int64_t allowed_lateness_ms,
                              char *errbuf, size_t errlen)
{
    if (windowed && (p->late.count == 0 || p->flush.count == 0))
        return tly_error(errbuf, errlen,
                         "pipeline %s has no event-time windows (it needs @late, "
                         "@flush and @flushed sections)",
                         p->name);
    p->windowed = windowed;
    bind_runtime(p, "allowed_lateness_ms", allowed_lateness_ms);
    bind_runtime(p, "closed_only", windowed ? 1 : 0);
    bind_runtime(p, "windowed", windowed ? 1 : 0);
    return 0;
}

int tly_pipeline_flush(tly_pipeline *p, int64_t flush_seq, tly_emit_fn fn, void *ctx, char *errbuf,
                       size_t errlen)
{
    for (int k = 0; k < p->flush.count; k++) {
        sqlite3_stmt *stmt = p->flush.statements[k].stmt;
        int index;
        if ((index = sqlite3_bind_parameter_index(stmt, ":flush_seq")))
            sqlite3_bind_int64(stmt, index, flush_seq);
        if (run_outputs(p, "flush", stmt, fn, ctx, errbuf, errlen) < 0)
            return -1;
    }
    return 0;
}

int tly_pipeline_flushed(tly_pipeline *p, int64_t flush_seq, char *errbuf, size_t errlen)
{
    for (int k = 0; k < p->flushed.count; k++) {
        sqlite3_stmt *stmt = p->flushed.statements[k].stmt;
        int index, rc;
        if ((index = sqlite3_bind_parameter_index(stmt, ":flush_seq")))
            sqlite3_bind_int64(stmt, index, flush_seq);
        while ((rc = sqlite3_step(stmt)) == SQLITE_ROW)
            ;
        sqlite3_reset(stmt);
        if (rc != SQLITE_DONE)
            return tly_error(errbuf, errlen, "%s @flushed: %s", p->source_name,
                             sqlite3_errmsg(p->db));
    }
    return 0;
}
