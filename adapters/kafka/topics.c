/* adapters/kafka/topics.c - a pipeline's Kafka topics: their names, their cleanup
 * policies, and creating the missing ones through the Admin API.
 *
 * Cleanup policies, and why:
 *
 *   input      orders: delete     a stream of events; history ages out
 *              telemetry: compact the aggregated stream is keyed by VIN and
 *                                 compacted in the upstream setup
 *              enrich: delete     raw orders, a stream
 *   output     compact            the latest value per window or vehicle key
 *              enrich: delete     every enriched order, a stream keyed by
 *                                 store (compaction would keep one per store);
 *                                 it is the orders pipeline's input
 *   changelog  compact            the latest image per state key: enough to
 *                                 rebuild the state, and it never ages out
 *   snapshots  compact            only the newest manifest matters
 *   dlq        delete             every rejected event, once
 *
 * tly_topics_ensure checks everything before it creates anything, so a conflict
 * leaves the cluster as it was. Another process may create the same topics at
 * the same time: TOPIC_ALREADY_EXISTS is not an error but a reason to look
 * again, and the topic that won is then checked like any existing one.
 * Replication factor -1 asks the broker for its default.replication.factor,
 * which is right for both a one-node test broker and a production cluster. */
#include "topics.h"
#include "clock.h"

#include "kconf.h"
#include "pipeline.h"

#include <librdkafka/rdkafka.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define DEFAULT_TIMEOUT_MS 30000 /* when timeout_ms <= 0 */
#define MAX_TOPIC_NAME 249       /* Kafka's limit */
#define RETRY_INTERVAL_MS 100
#define MAX_CREATE_ATTEMPTS 5

static const struct pipeline_topics {
    const char *pipeline, *input, *output, *input_policy, *output_policy;
} pipeline_topics[] = {
    {"orders", "orders.enriched", "orders.output", "delete", "compact"},
    {"telemetry", "sensor-service.dispatch.telemetry-aggregated",
     "sensor-service.dispatch.telemetry-latest-compacted", "compact", "compact"},
    {"enrich", "orders", "orders.enriched", "delete", "delete"},
};

/* ------------------------------------------------------------ layout --- */

static int check_topic_name(const char *what, const char *name, char *errbuf, size_t errlen)
{
    size_t len = strlen(name);
    if (len == 0 || len > MAX_TOPIC_NAME) {
        snprintf(errbuf, errlen,
                 "%s topic name \"%s\" must be 1 to %d characters long (it has %zu)", what, name,
                 MAX_TOPIC_NAME, len);
        return -1;
    }
    /* Kafka reserves "." and ".." (they would be log directory names). */
    if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0) {
        snprintf(errbuf, errlen, "%s topic name \"%s\" is not allowed", what, name);
        return -1;
    }
    for (const char *c = name; *c; c++) {
        if ((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
            *c == '.' || *c == '_' || *c == '-')
            continue;
        snprintf(errbuf, errlen,
                 "%s topic name \"%s\" has the character '%c'; only a-z A-Z 0-9 . _ - are allowed",
                 what, name, *c);
        return -1;
    }
    return 0;
}

static int set_spec(tly_topic_spec *spec, const char *what, const char *name, const char *suffix,
                    const char *policy, char *errbuf, size_t errlen)
{
    int n = snprintf(spec->name, sizeof(spec->name), "%s%s", name, suffix);
    if (n < 0 || (size_t)n >= sizeof(spec->name)) {
        snprintf(errbuf, errlen, "%s topic name \"%.40s...%s\" is longer than %d characters", what,
                 name, suffix, MAX_TOPIC_NAME);
        return -1;
    }
    spec->cleanup_policy = policy;
    return check_topic_name(what, spec->name, errbuf, errlen);
}

int tly_topics_layout(const char *pipeline, const char *prefix, const char *input,
                      const char *output, tly_topic_layout *layout, char *errbuf, size_t errlen)
{
    const struct pipeline_topics *p = NULL;
    const tly_topic_spec *all[5];
    struct pipeline_topics own = {NULL, NULL, NULL, "delete", "compact"};
    tly_pipeline_info info;
    char own_input[300], own_output[300];

    memset(layout, 0, sizeof(*layout));
    for (size_t i = 0; i < sizeof(pipeline_topics) / sizeof(pipeline_topics[0]); i++)
        if (pipeline && strcmp(pipeline, pipeline_topics[i].pipeline) == 0)
            p = &pipeline_topics[i];
    if (!p && pipeline && tly_pipeline_is_file(pipeline)) {
        if (tly_pipeline_describe(pipeline, &info, errbuf, errlen) < 0)
            return -1;
        snprintf(own_input, sizeof(own_input), "%s.input", info.name);
        snprintf(own_output, sizeof(own_output), "%s.output", info.name);
        own.input = info.input_topic[0] ? info.input_topic : own_input;
        own.output = info.output_topic[0] ? info.output_topic : own_output;
        p = &own;
    }
    if (!p) {
        snprintf(errbuf, errlen,
                 "unknown pipeline \"%s\" (orders, telemetry, enrich, or a pipeline .sql file)",
                 pipeline ? pipeline : "");
        return -1;
    }
    if (!prefix)
        prefix = "opb";
    if (!*prefix) {
        snprintf(errbuf, errlen, "the topic prefix must not be empty");
        return -1;
    }
    if (set_spec(&layout->input, "input", input ? input : p->input, "", p->input_policy, errbuf,
                 errlen) < 0 ||
        set_spec(&layout->output, "output", output ? output : p->output, "", p->output_policy,
                 errbuf, errlen) < 0 ||
        set_spec(&layout->changelog, "changelog", prefix, "-changelog", "compact", errbuf, errlen) <
            0 ||
        set_spec(&layout->snapshots, "snapshots", prefix, "-snapshots", "compact", errbuf, errlen) <
            0 ||
        set_spec(&layout->dlq, "dlq", prefix, "-dlq", "delete", errbuf, errlen) < 0)
        return -1;
    /* One topic in two roles would mix records of different kinds (and needs
     * two cleanup policies at once). */
    all[0] = &layout->input;
    all[1] = &layout->output;
    all[2] = &layout->changelog;
    all[3] = &layout->snapshots;
    all[4] = &layout->dlq;
    for (int i = 0; i < 5; i++)
        for (int j = i + 1; j < 5; j++)
            if (strcmp(all[i]->name, all[j]->name) == 0) {
                snprintf(errbuf, errlen,
                         "topic %s is used twice in the layout (input, output and "
                         "the internal topics must all differ)",
                         all[i]->name);
                return -1;
            }
    return 0;
}

/* ------------------------------------------------------------- admin --- */

struct admin {
    rd_kafka_t *rk;
    rd_kafka_queue_t *queue; /* admin results arrive here */
    const char *brokers;
    char last_error[256]; /* the client's latest error, e.g. a refused connection */
};

/* A topic of the layout as the cluster has it. */
struct topic_state {
    const tly_topic_spec *spec;
    unsigned bit;
    const char *role;
    int exists, ready, partitions; /* from metadata; ready = every partition has a leader */
    rd_kafka_resp_err_t metadata_err;
    char policy[128];       /* from DescribeConfigs, when it exists */
    int created;            /* by this call */
    int await;              /* created or raced this round: wait until visible */
    char raced_reason[256]; /* the broker's TOPIC_ALREADY_EXISTS message */
};

static int remaining_ms(int64_t deadline)
{
    int64_t left = deadline - tly_clock_mono_ms();
    return left > 0 ? (int)left : 0;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    struct admin *a = opaque;
    (void)rk;
    (void)err;
    snprintf(a->last_error, sizeof(a->last_error), "%s", reason);
}

/* Errors reach on_error, which puts them into our messages; the default log
 * lines on stderr would only repeat them in librdkafka's own format. */
static void on_log(const rd_kafka_t *rk, int level, const char *facility, const char *message)
{
    (void)rk;
    (void)level;
    (void)facility;
    (void)message;
}

/* " (last error: ...)" when the client saw one, so a timeout names its cause. */
static const char *last_error_note(struct admin *a, char *buf, size_t buflen)
{
    rd_kafka_poll(a->rk, 0); /* serves on_error */
    if (!a->last_error[0])
        return "";
    snprintf(buf, buflen, " (last error: %s)", a->last_error);
    return buf;
}

static int admin_open(struct admin *a, const char *brokers, char *errbuf, size_t errlen)
{
    static const char *const defaults[] = {"client.id", "tally-admin", NULL};
    rd_kafka_conf_t *conf;

    memset(a, 0, sizeof(*a));
    a->brokers = brokers;
    if (!(conf = tly_kconf_new(brokers, defaults, NULL, errbuf, errlen)))
        return -1;
    rd_kafka_conf_set_opaque(conf, a);
    rd_kafka_conf_set_error_cb(conf, on_error);
    rd_kafka_conf_set_log_cb(conf, on_log);
    /* A producer handle is the plainest client that can send admin requests. */
    if (!(a->rk =
              tly_kconf_client(RD_KAFKA_PRODUCER, conf, "a Kafka admin client", errbuf, errlen)))
        return -1;
    a->queue = rd_kafka_queue_new(a->rk);
    return 0;
}

static void admin_close(struct admin *a)
{
    if (a->queue)
        rd_kafka_queue_destroy(a->queue);
    if (a->rk)
        rd_kafka_destroy(a->rk);
}

/* Waits for the result of an admin request of type `type`; NULL on timeout
 * (the request has its own timeout, so this one is only a safety net). */
static rd_kafka_event_t *wait_result(struct admin *a, rd_kafka_event_type_t type, int64_t deadline)
{
    int64_t give_up = deadline + 5000;
    while (tly_clock_mono_ms() < give_up) {
        rd_kafka_event_t *ev = rd_kafka_queue_poll(a->queue, RETRY_INTERVAL_MS);
        rd_kafka_poll(a->rk, 0);
        if (!ev)
            continue;
        if (rd_kafka_event_type(ev) == type)
            return ev;
        rd_kafka_event_destroy(ev);
    }
    return NULL;
}

/* --------------------------------------------------------- inspecting --- */

static void apply_metadata(const struct rd_kafka_metadata *md, struct topic_state *t)
{
    t->exists = t->ready = t->partitions = 0;
    t->metadata_err = RD_KAFKA_RESP_ERR_NO_ERROR;
    for (int i = 0; i < md->topic_cnt; i++) {
        const rd_kafka_metadata_topic_t *mt = &md->topics[i];
        if (strcmp(mt->topic, t->spec->name) != 0)
            continue;
        if (mt->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
            return;
        t->exists = 1;
        t->metadata_err = mt->err;
        t->partitions = mt->partition_cnt;
        t->ready = mt->err == RD_KAFKA_RESP_ERR_NO_ERROR && mt->partition_cnt > 0;
        for (int p = 0; p < mt->partition_cnt; p++)
            if (mt->partitions[p].leader < 0)
                t->ready = 0;
        return;
    }
}

/* Reads every topic of `t` from the cluster metadata, and keeps reading until
 * each existing one has a leader for every partition (a topic that is being
 * created has none yet, and its partition count is not final) and each awaited
 * one exists. */
static int refresh(struct admin *a, struct topic_state *t, int n, int64_t deadline, char *errbuf,
                   size_t errlen)
{
    char note[300];
    for (;;) {
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_resp_err_t err;
        struct topic_state *pending = NULL;
        int left = remaining_ms(deadline);

        /* All topics: asking for named ones could make a broker with
         * auto.create.topics.enable create them, with the wrong policy. */
        err = rd_kafka_metadata(a->rk, 1, NULL, &md, left > 0 ? left : 1);
        if (err) {
            snprintf(errbuf, errlen, "cannot read the topic list from %s: %s%s", a->brokers,
                     rd_kafka_err2str(err), last_error_note(a, note, sizeof(note)));
            return -1;
        }
        for (int i = 0; i < n; i++) {
            apply_metadata(md, &t[i]);
            if (!pending && ((t[i].exists && !t[i].ready) || (t[i].await && !t[i].exists)))
                pending = &t[i];
        }
        rd_kafka_metadata_destroy(md);
        if (!pending)
            return 0;
        if (remaining_ms(deadline) == 0) {
            if (!pending->exists && pending->raced_reason[0])
                snprintf(errbuf, errlen,
                         "topic %s: the broker says \"%s\", but it is not in the "
                         "topic list; try again later",
                         pending->spec->name, pending->raced_reason);
            else if (!pending->exists)
                snprintf(errbuf, errlen,
                         "topic %s was created but is not in the topic list of %s "
                         "in time",
                         pending->spec->name, a->brokers);
            else if (pending->metadata_err)
                snprintf(errbuf, errlen, "topic %s is not usable on %s: %s", pending->spec->name,
                         a->brokers, rd_kafka_err2str(pending->metadata_err));
            else
                snprintf(errbuf, errlen, "topic %s has partitions without a leader on %s",
                         pending->spec->name, a->brokers);
            return -1;
        }
        sleep_ms(RETRY_INTERVAL_MS);
    }
}

/* Fills t->policy for the existing topics among those with a bit in `which`. */
static int describe_policies(struct admin *a, struct topic_state *t, int n, unsigned which,
                             int64_t deadline, char *errbuf, size_t errlen)
{
    rd_kafka_ConfigResource_t *resources[5];
    rd_kafka_AdminOptions_t *options = NULL;
    rd_kafka_event_t *ev = NULL;
    const rd_kafka_ConfigResource_t **results;
    size_t count = 0, nresults = 0;
    char errstr[512], note[300];
    int rc = -1;

    for (int i = 0; i < n; i++) {
        t[i].policy[0] = '\0';
        if (t[i].exists && (which & t[i].bit))
            resources[count++] =
                rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC, t[i].spec->name);
    }
    if (count == 0)
        return 0;
    options = rd_kafka_AdminOptions_new(a->rk, RD_KAFKA_ADMIN_OP_DESCRIBECONFIGS);
    if (rd_kafka_AdminOptions_set_request_timeout(options, remaining_ms(deadline) + 1, errstr,
                                                  sizeof(errstr))) {
        snprintf(errbuf, errlen, "%s", errstr);
        goto done;
    }
    rd_kafka_DescribeConfigs(a->rk, resources, count, options, a->queue);
    ev = wait_result(a, RD_KAFKA_EVENT_DESCRIBECONFIGS_RESULT, deadline);
    if (!ev || rd_kafka_event_error(ev)) {
        snprintf(errbuf, errlen, "cannot read topic configurations from %s: %s%s", a->brokers,
                 ev ? rd_kafka_event_error_string(ev) : "timed out",
                 last_error_note(a, note, sizeof(note)));
        goto done;
    }
    results = rd_kafka_DescribeConfigs_result_resources(rd_kafka_event_DescribeConfigs_result(ev),
                                                        &nresults);
    for (size_t r = 0; r < nresults; r++) {
        const char *name = rd_kafka_ConfigResource_name(results[r]);
        const rd_kafka_ConfigEntry_t **entries;
        size_t nentries = 0;
        struct topic_state *topic = NULL;

        for (int i = 0; i < n; i++)
            if (strcmp(t[i].spec->name, name) == 0)
                topic = &t[i];
        if (!topic)
            continue;
        if (rd_kafka_ConfigResource_error(results[r])) {
            snprintf(errbuf, errlen, "cannot read the configuration of topic %s: %s", name,
                     rd_kafka_ConfigResource_error_string(results[r])
                         ? rd_kafka_ConfigResource_error_string(results[r])
                         : rd_kafka_err2str(rd_kafka_ConfigResource_error(results[r])));
            goto done;
        }
        entries = rd_kafka_ConfigResource_configs(results[r], &nentries);
        for (size_t e = 0; e < nentries; e++)
            if (strcmp(rd_kafka_ConfigEntry_name(entries[e]), "cleanup.policy") == 0 &&
                rd_kafka_ConfigEntry_value(entries[e]))
                snprintf(topic->policy, sizeof(topic->policy), "%s",
                         rd_kafka_ConfigEntry_value(entries[e]));
    }
    for (int i = 0; i < n; i++)
        if (t[i].exists && (which & t[i].bit) && !t[i].policy[0]) {
            snprintf(errbuf, errlen, "topic %s: the broker did not report its cleanup.policy",
                     t[i].spec->name);
            goto done;
        }
    rc = 0;
done:
    if (ev)
        rd_kafka_event_destroy(ev);
    if (options)
        rd_kafka_AdminOptions_destroy(options);
    rd_kafka_ConfigResource_destroy_array(resources, count);
    return rc;
}

/* ---------------------------------------------------------- checking --- */

/* Whether `list` (a cleanup.policy value such as "compact,delete") holds the
 * policy `word`. */
static int policy_has(const char *list, const char *word, size_t wordlen)
{
    const char *p = list;
    while (*p) {
        const char *start, *end;
        while (*p == ' ' || *p == ',')
            p++;
        start = p;
        while (*p && *p != ',')
            p++;
        end = p;
        while (end > start && end[-1] == ' ')
            end--;
        if ((size_t)(end - start) == wordlen && strncmp(start, word, wordlen) == 0)
            return 1;
    }
    return 0;
}

/* Compares as sets: "compact,delete" equals "delete, compact", but not
 * "compact", because delete would let retention drop what compaction keeps. */
static int same_policy(const char *have, const char *want)
{
    for (int pass = 0; pass < 2; pass++) {
        const char *a = pass ? want : have, *b = pass ? have : want, *p = a;
        while (*p) {
            const char *start;
            size_t len;
            while (*p == ' ' || *p == ',')
                p++;
            start = p;
            while (*p && *p != ',')
                p++;
            len = (size_t)(p - start);
            while (len > 0 && start[len - 1] == ' ')
                len--;
            if (len > 0 && !policy_has(b, start, len))
                return 0;
        }
    }
    return 1;
}

static void add_problem(char *errbuf, size_t errlen, int *problems, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void add_problem(char *errbuf, size_t errlen, int *problems, const char *fmt, ...)
{
    size_t used = *problems ? strlen(errbuf) : 0;
    va_list ap;
    if (*problems && used + 2 < errlen) {
        memcpy(errbuf + used, "; ", 3);
        used += 2;
    }
    if (used < errlen) {
        va_start(ap, fmt);
        vsnprintf(errbuf + used, errlen - used, fmt, ap);
        va_end(ap);
    }
    (*problems)++;
}

/* Returns the number of conflicts between the cluster and the layout, all of
 * them described in errbuf. input_partitions is what the internal topics must
 * have. */
static int find_conflicts(struct admin *a, const struct topic_state *t, int n, unsigned which,
                          int input_partitions, char *errbuf, size_t errlen)
{
    const struct topic_state *input = &t[0];
    int problems = 0;

    if (!input->exists && !(which & TLY_TOPIC_INPUT))
        add_problem(errbuf, errlen, &problems,
                    "input topic %s does not exist on %s; create it with `tally topics create`",
                    input->spec->name, a->brokers);
    for (int i = 0; i < n; i++) {
        if (!(which & t[i].bit) || !t[i].exists)
            continue;
        if (!same_policy(t[i].policy, t[i].spec->cleanup_policy))
            add_problem(errbuf, errlen, &problems,
                        "topic %s exists with cleanup.policy=%s, tally needs %s", t[i].spec->name,
                        t[i].policy, t[i].spec->cleanup_policy);
        if ((t[i].bit & TLY_TOPIC_INTERNAL) && t[i].partitions != input_partitions) {
            if (input->exists)
                add_problem(errbuf, errlen, &problems,
                            "topic %s has %d partitions, the input %s has %d", t[i].spec->name,
                            t[i].partitions, input->spec->name, input_partitions);
            else
                add_problem(errbuf, errlen, &problems,
                            "topic %s has %d partitions, the input %s would be created with %d",
                            t[i].spec->name, t[i].partitions, input->spec->name, input_partitions);
        }
    }
    return problems;
}

/* ---------------------------------------------------------- creating --- */

/* Creates the selected topics that do not exist. A topic someone else created
 * meanwhile is marked await with the broker's message instead. */
static int create_missing(struct admin *a, struct topic_state *t, int n, unsigned which,
                          int input_partitions, int64_t deadline, int *raced, char *errbuf,
                          size_t errlen)
{
    rd_kafka_NewTopic_t *new_topics[5];
    rd_kafka_AdminOptions_t *options = NULL;
    rd_kafka_event_t *ev = NULL;
    const rd_kafka_topic_result_t **results;
    size_t count = 0, nresults = 0;
    char errstr[512], note[300];
    int rc = -1, problems = 0;

    *raced = 0;
    for (int i = 0; i < n; i++) {
        rd_kafka_NewTopic_t *nt;
        if (!(which & t[i].bit) || t[i].exists)
            continue;
        nt = rd_kafka_NewTopic_new(t[i].spec->name, input_partitions, -1, errstr, sizeof(errstr));
        if (!nt) {
            snprintf(errbuf, errlen, "topic %s: %s", t[i].spec->name, errstr);
            goto done;
        }
        new_topics[count++] = nt;
        if (rd_kafka_NewTopic_set_config(nt, "cleanup.policy", t[i].spec->cleanup_policy)) {
            snprintf(errbuf, errlen, "topic %s: cannot set cleanup.policy", t[i].spec->name);
            goto done;
        }
    }
    if (count == 0)
        return 0;
    options = rd_kafka_AdminOptions_new(a->rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    if (rd_kafka_AdminOptions_set_request_timeout(options, remaining_ms(deadline) + 1, errstr,
                                                  sizeof(errstr)) ||
        rd_kafka_AdminOptions_set_operation_timeout(options, remaining_ms(deadline) + 1, errstr,
                                                    sizeof(errstr))) {
        snprintf(errbuf, errlen, "%s", errstr);
        goto done;
    }
    rd_kafka_CreateTopics(a->rk, new_topics, count, options, a->queue);
    ev = wait_result(a, RD_KAFKA_EVENT_CREATETOPICS_RESULT, deadline);
    if (!ev || rd_kafka_event_error(ev)) {
        snprintf(errbuf, errlen, "cannot create topics on %s: %s%s", a->brokers,
                 ev ? rd_kafka_event_error_string(ev) : "timed out",
                 last_error_note(a, note, sizeof(note)));
        goto done;
    }
    results =
        rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), &nresults);
    for (size_t r = 0; r < nresults; r++) {
        const char *name = rd_kafka_topic_result_name(results[r]);
        rd_kafka_resp_err_t err = rd_kafka_topic_result_error(results[r]);
        const char *message = rd_kafka_topic_result_error_string(results[r]);
        struct topic_state *topic = NULL;

        for (int i = 0; i < n; i++)
            if (strcmp(t[i].spec->name, name) == 0)
                topic = &t[i];
        if (!topic)
            continue;
        if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
            topic->created = topic->await = 1;
        } else if (err == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
            topic->await = 1;
            *raced = 1;
            snprintf(topic->raced_reason, sizeof(topic->raced_reason), "%s",
                     message ? message : rd_kafka_err2str(err));
        } else {
            add_problem(errbuf, errlen, &problems, "cannot create topic %s: %s", name,
                        message ? message : rd_kafka_err2str(err));
        }
    }
    rc = problems ? -1 : 0;
done:
    if (ev)
        rd_kafka_event_destroy(ev);
    if (options)
        rd_kafka_AdminOptions_destroy(options);
    rd_kafka_NewTopic_destroy_array(new_topics, count);
    return rc;
}

int tly_topics_ensure(const char *brokers, const tly_topic_layout *layout, unsigned which,
                      int partitions, int timeout_ms, int *created, char *errbuf, size_t errlen)
{
    struct topic_state t[5] = {
        {.spec = &layout->input, .bit = TLY_TOPIC_INPUT, .role = "input"},
        {.spec = &layout->output, .bit = TLY_TOPIC_OUTPUT, .role = "output"},
        {.spec = &layout->changelog, .bit = TLY_TOPIC_CHANGELOG, .role = "changelog"},
        {.spec = &layout->snapshots, .bit = TLY_TOPIC_SNAPSHOTS, .role = "snapshots"},
        {.spec = &layout->dlq, .bit = TLY_TOPIC_DLQ, .role = "dlq"},
    };
    const int n = 5;
    struct admin a = {0};
    int64_t deadline = tly_clock_mono_ms() + (timeout_ms > 0 ? timeout_ms : DEFAULT_TIMEOUT_MS);
    int rc = -1;

    if (created)
        *created = 0;
    which &= TLY_TOPIC_ALL;
    if (!brokers || !*brokers) {
        snprintf(errbuf, errlen, "no Kafka brokers given");
        return -1;
    }
    for (int i = 0; i < n; i++) {
        if (check_topic_name(t[i].role, t[i].spec->name, errbuf, errlen) < 0)
            return -1;
        if (!t[i].spec->cleanup_policy) {
            snprintf(errbuf, errlen, "%s topic %s has no cleanup.policy in the layout", t[i].role,
                     t[i].spec->name);
            return -1;
        }
    }
    if (admin_open(&a, brokers, errbuf, errlen) < 0)
        goto done;
    for (int attempt = 1;; attempt++) {
        int input_partitions, missing = 0, raced;

        if (refresh(&a, t, n, deadline, errbuf, errlen) < 0 ||
            describe_policies(&a, t, n, which, deadline, errbuf, errlen) < 0)
            goto done;
        input_partitions = t[0].exists ? t[0].partitions : partitions > 0 ? partitions : 1;
        if (find_conflicts(&a, t, n, which, input_partitions, errbuf, errlen) > 0)
            goto done;
        for (int i = 0; i < n; i++) {
            missing += (which & t[i].bit) && !t[i].exists;
            t[i].await = 0;
            t[i].raced_reason[0] = '\0';
        }
        if (missing == 0)
            break;
        if (attempt > MAX_CREATE_ATTEMPTS) {
            snprintf(errbuf, errlen,
                     "topics of the layout keep being created and deleted on %s; "
                     "gave up after %d attempts",
                     brokers, MAX_CREATE_ATTEMPTS);
            goto done;
        }
        /* The input goes first in the same request: the others take its
         * partition count, fixed above. */
        if (create_missing(&a, t, n, which, input_partitions, deadline, &raced, errbuf, errlen) <
                0 ||
            refresh(&a, t, n, deadline, errbuf, errlen) < 0)
            goto done;
        /* A topic created by someone else must pass the checks too. */
        if (!raced)
            break;
    }
    if (created)
        for (int i = 0; i < n; i++)
            *created += t[i].created;
    rc = 0;
done:
    admin_close(&a);
    return rc;
}
