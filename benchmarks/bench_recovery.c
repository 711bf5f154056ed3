/* benchmarks/bench_recovery.c - time to recover of `tally run` after kill -9,
 * on a real broker.
 *
 *   bench_recovery --brokers B --tally PATH [--keys N[,N...]] [--changelog on|off|both]
 *                  [--db intact,lost,none] [--tail N] [--snapshot-interval S]
 *                  [--stall on|off] [--stall-rate N] [--stall-seconds S]
 *
 * TTR (time to recover): from the exec of the restarted `tally run --pipeline
 * orders` to the first output record it newly commits, as seen by an
 * independent read_committed consumer of the output topic. Each scenario has
 * fresh topics of one partition, its own state directory and a snapshot
 * directory outside it:
 *
 *   1. build: one order for each of N keys (storeId s<k/1000>, productId
 *      p<k%1000>, one window, price 1.25, qty 1) from an idempotent producer,
 *      snapshots every --snapshot-interval, after a first snapshot of one
 *      order; wait until the output shows all N and the daemon logs a snapshot
 *      whose last_seq is the database's; report its bytes and duration:
 *      snapshot_ms is the logged write_ms (the copy, on its own thread) and
 *      publish_ms the manifest's Kafka transaction (between batches);
 *   2. tail: SIGTERM, restart without snapshots (so the whole tail is changelog
 *      after that snapshot), --tail orders to existing keys; once the output
 *      and the database hold them, kill -9;
 *   3. db=intact keeps the files; db=lost deletes <state-dir>/orders.db, -wal,
 *      -shm; db=none deletes the state and snapshot directories (not run with
 *      changelog=off: nothing could rebuild the state);
 *   4. restart and at once produce an order for a new key, the marker: TTR ends
 *      when its window is in the output. ready_ms, recovered_ms, started_ms and
 *      first_commit_ms: when the daemon logged those events (exec = 0); source,
 *      tally_ttr_ms, records_replayed, bytes_replayed, input_reread (changelog
 *      off: input records read again), restored_snapshot: its
 *      recovered line; "-" for what it did not log;
 *   5. SIGTERM, then exact=yes when the database has N+1 windows whose counts
 *      add up to the orders produced and sums to 1.25 times that, and the output
 *      shows every order; otherwise exact=no.
 *
 * Snapshot stall (--stall on): on an N-key state, a steady load on random
 * keys, once without snapshots and once with one every second; after 3 s of
 * warm-up, the longest gap between two output records. What a snapshot makes
 * the daemon wait for (the manifest's transaction; the copy runs beside it)
 * shows up as a gap.
 *
 * Exit status 0 when every scenario ran to its end, exact or not. Figures vary
 * from run to run on a shared machine; compare lines of one run. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define STALL_WARMUP_MS 3000
#define NO_PROGRESS_MS 60000 /* a wait fails when nothing moved for this long */

static const char *brokers, *tally = "build/tally";
static rd_kafka_t *producer;
static atomic_int delivery_errors;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------------------ */
/* The reader: an independent read_committed consumer of the output topic   */
/* ------------------------------------------------------------------------ */

struct view {
    rd_kafka_t *consumer;
    int64_t keys, *counts; /* latest count of key k's window; counts[keys] is the marker's */
    int64_t visible;       /* sum of the latest counts: orders whose effect is visible */
    int64_t last_progress_ms, marker_seen_ms;
    int64_t gap_from_ms, last_record_ms, max_gap_ms; /* gaps only while gap_from_ms */
};

static int view_open(struct view *v, const char *topic, const char *group, int64_t keys)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_topic_partition_list_t *partitions = rd_kafka_topic_partition_list_new(1);
    char errstr[256] = "out of memory";
    int rc = -1;

    memset(v, 0, sizeof(*v));
    v->keys = keys;
    if (!(v->counts = calloc((size_t)keys + 1, sizeof(*v->counts))))
        goto done;
    if (rd_kafka_conf_set(conf, "bootstrap.servers", brokers, errstr, sizeof(errstr)) ||
        rd_kafka_conf_set(conf, "group.id", group, errstr, sizeof(errstr)) ||
        rd_kafka_conf_set(conf, "isolation.level", "read_committed", errstr, sizeof(errstr)) ||
        rd_kafka_conf_set(conf, "fetch.wait.max.ms", "10", errstr, sizeof(errstr)) ||
        !(v->consumer = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr))))
        goto done;
    conf = NULL; /* rd_kafka_new() took ownership */
    /* assign, not subscribe: no group join to wait for, and the reader never commits */
    rd_kafka_topic_partition_list_add(partitions, topic, 0)->offset = RD_KAFKA_OFFSET_BEGINNING;
    if (rd_kafka_assign(v->consumer, partitions)) {
        snprintf(errstr, sizeof(errstr), "cannot assign %s", topic);
        goto done;
    }
    v->last_progress_ms = now_ms();
    rc = 0;
done:
    if (rc < 0)
        fprintf(stderr, "bench_recovery: reader of %s: %s\n", topic, errstr);
    if (conf)
        rd_kafka_conf_destroy(conf);
    rd_kafka_topic_partition_list_destroy(partitions);
    return rc;
}

static void view_close(struct view *v)
{
    if (v->consumer) {
        rd_kafka_consumer_close(v->consumer);
        rd_kafka_destroy(v->consumer);
    }
    free(v->counts);
    memset(v, 0, sizeof(*v));
}

static void view_poll(struct view *v, int timeout_ms)
{
    rd_kafka_message_t *m = rd_kafka_consumer_poll(v->consumer, timeout_ms);
    int64_t now = now_ms();
    char key[64];
    long long store, product;

    if (!m)
        return;
    if (!m->err && m->key && m->payload && m->key_len < sizeof(key)) {
        const char *count = memmem(m->payload, m->len, "\"count\":", 8);
        memcpy(key, m->key, m->key_len);
        key[m->key_len] = '\0';
        bool marker = strncmp(key, "marker#", 7) == 0;
        if (marker && !v->marker_seen_ms)
            v->marker_seen_ms = now;
        if ((marker || sscanf(key, "s%lld#p%lld#", &store, &product) == 2) && count) {
            int64_t k = marker ? v->keys : store * 1000 + product, c = atoll(count + 8);
            /* only growth counts: an older record of a window adds nothing */
            if (k >= 0 && (marker || k < v->keys) && c > v->counts[k]) {
                v->visible += c - v->counts[k];
                v->counts[k] = c;
                v->last_progress_ms = now;
            }
        }
        if (v->gap_from_ms && now - v->last_record_ms > v->max_gap_ms)
            v->max_gap_ms = now - v->last_record_ms;
        v->last_record_ms = now;
    }
    rd_kafka_message_destroy(m);
}

/* ------------------------------------------------------------------------ */
/* The daemon: `tally run` as a child, its stderr read by a thread           */
/* ------------------------------------------------------------------------ */

struct daemon {
    pid_t pid;
    bool reaped;
    int status;
    pthread_t reader;
    FILE *err; /* the read end of the child's stderr */
    FILE *log; /* all it logged, kept for a look after a failure */
    int64_t exec_ms;
    /* written by the reader thread: when an event was logged (-1 = not yet) */
    _Atomic int64_t ready_ms, recovered_ms, started_ms, first_commit_ms;
    /* the last snapshot logged */
    _Atomic int64_t snapshots, snapshot_seq, snapshot_bytes, snapshot_ms, publish_ms;
    _Atomic int64_t snapshot_ms_max, publish_ms_max;
    char recovered[2048]; /* the recovered line, complete once recovered_ms is set */
};

/* Copies the value of `name` in a logfmt line into out; returns out, or "-"
 * when the line has no such field. */
static const char *field(const char *line, const char *name, char *out, size_t len)
{
    size_t n = strlen(name);
    for (const char *p = line; (p = strstr(p, name)); p += n) {
        if ((p == line || p[-1] == ' ') && p[n] == '=') {
            const char *v = p + n + 1;
            bool quoted = *v == '"';
            size_t i = 0;
            for (v += quoted; v[i] && v[i] != '\n' && v[i] != (quoted ? '"' : ' ') && i + 1 < len;
                 i++)
                out[i] = v[i];
            out[i] = '\0';
            return out;
        }
    }
    return "-";
}

static void *read_stderr(void *arg)
{
    struct daemon *d = arg;
    char *line = NULL, event[64], value[64];
    size_t cap = 0;

    while (getline(&line, &cap, d->err) > 0) {
        int64_t at = now_ms() - d->exec_ms;
        fputs(line, d->log);
        field(line, "event", event, sizeof(event));
        if (strcmp(event, "producer_ready") == 0 && d->ready_ms < 0)
            d->ready_ms = at;
        else if (strcmp(event, "started") == 0 && d->started_ms < 0)
            d->started_ms = at;
        else if (strcmp(event, "first_commit") == 0 && d->first_commit_ms < 0)
            d->first_commit_ms = at;
        else if (strcmp(event, "recovered") == 0 && d->recovered_ms < 0) {
            snprintf(d->recovered, sizeof(d->recovered), "%s", line);
            d->recovered_ms = at; /* after the line: a reader that sees the time sees it */
        } else if (strcmp(event, "snapshot") == 0) {
            d->snapshot_bytes = atoll(field(line, "bytes", value, sizeof(value)));
            /* write_ms: the copy, on its own thread beside the daemon;
             * publish_ms: the manifest's transaction, between batches */
            d->snapshot_ms = atoll(field(line, "write_ms", value, sizeof(value)));
            d->publish_ms = atoll(field(line, "publish_ms", value, sizeof(value)));
            if (d->snapshot_ms > d->snapshot_ms_max)
                d->snapshot_ms_max = d->snapshot_ms;
            if (d->publish_ms > d->publish_ms_max)
                d->publish_ms_max = d->publish_ms;
            d->snapshots++;
            /* last: whoever sees this seq sees the figures above */
            d->snapshot_seq = atoll(field(line, "last_seq", value, sizeof(value)));
        }
    }
    free(line);
    fclose(d->err);
    fclose(d->log);
    return NULL;
}

/* One scenario's names, files, reader and daemon; fresh for every scenario. */
struct run {
    char prefix[64], input[96], output[96], dir[128], state_dir[160], snapshot_dir[160];
    char db[192], log[160];
    int64_t produced, event_ms;
    struct view view;
    struct daemon daemon;
};

/* Starts `tally run` on the run's topics and directories. Returns 0 or -1. */
static int daemon_start(struct run *r, bool changelog, const char *snapshot_interval)
{
    struct daemon *d = &r->daemon;
    int fds[2];
    /* flags and their values side by side */
    /* clang-format off */
    char *argv[] = {(char *)tally, "run", "--pipeline", "orders", "--brokers", (char *)brokers,
                    "--topic-prefix", r->prefix, "--group-id", r->prefix, "--instance-id", "bench",
                    "--input-topic", r->input, "--output-topic", r->output,
                    "--state-dir", r->state_dir, "--snapshot-dir", r->snapshot_dir,
                    "--snapshot-interval", (char *)snapshot_interval,
                    "--changelog", changelog ? "on" : "off", NULL};
    /* clang-format on */

    memset(d, 0, sizeof(*d));
    d->ready_ms = d->recovered_ms = d->started_ms = d->first_commit_ms = -1;
    d->publish_ms = d->publish_ms_max = -1;
    /* close-on-exec, so no later child holds this pipe open */
    if (pipe2(fds, O_CLOEXEC) < 0)
        return -1;
    if (!(d->log = fopen(r->log, "a"))) {
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    d->exec_ms = now_ms();
    d->pid = fork();
    if (d->pid == 0) {
        dup2(fds[1], STDERR_FILENO);
        execv(argv[0], argv);
        _exit(127);
    }
    close(fds[1]);
    if (d->pid < 0 || !(d->err = fdopen(fds[0], "r"))) {
        if (d->pid > 0) {
            kill(d->pid, SIGKILL);
            waitpid(d->pid, NULL, 0);
        }
        close(fds[0]);
        fclose(d->log);
        d->pid = 0;
        return -1;
    }
    pthread_create(&d->reader, NULL, read_stderr, d);
    return 0;
}

static bool daemon_alive(struct daemon *d)
{
    if (!d->reaped && waitpid(d->pid, &d->status, WNOHANG) == d->pid)
        d->reaped = true;
    return !d->reaped;
}

/* Sends sig and waits until the process and its stderr have ended. */
static void daemon_stop(struct daemon *d, int sig)
{
    if (!d->pid)
        return;
    if (!d->reaped) {
        kill(d->pid, sig);
        d->reaped = waitpid(d->pid, &d->status, 0) == d->pid;
    }
    pthread_join(d->reader, NULL);
    d->pid = 0;
}

/* ------------------------------------------------------------------------ */
/* Orders, waits and the database                                            */
/* ------------------------------------------------------------------------ */

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    (void)opaque;
    if (m->err)
        delivery_errors++;
}

/* Queues one order for store/product in the run's one window. */
static void produce_order(struct run *r, const char *store, const char *product)
{
    char order[256];
    int len = snprintf(order, sizeof(order),
                       "{\"orderId\":\"o-%lld\",\"storeId\":\"%s\",\"productId\":\"%s\","
                       "\"price\":1.25,\"qty\":1,\"ts\":%lld,\"validated\":true}",
                       (long long)r->produced, store, product, (long long)r->event_ms);
    rd_kafka_resp_err_t err;
    while ((err = rd_kafka_producev(
                producer, RD_KAFKA_V_TOPIC(r->input), RD_KAFKA_V_KEY(store, strlen(store)),
                RD_KAFKA_V_VALUE(order, (size_t)len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                RD_KAFKA_V_END)) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
        rd_kafka_poll(producer, 10);
    if (err)
        delivery_errors++;
    r->produced++;
}

static void produce_key(struct run *r, int64_t k)
{
    char store[32], product[32];
    snprintf(store, sizeof(store), "s%lld", (long long)(k / 1000));
    snprintf(product, sizeof(product), "p%lld", (long long)(k % 1000));
    produce_order(r, store, product);
}

static int fail(struct run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(struct run *r, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "bench_recovery: %s: ", r->prefix);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (tally's log: %s)\n", r->log);
    return -1;
}

static int flush(struct run *r)
{
    if (rd_kafka_flush(producer, 60000) || delivery_errors)
        return fail(r, "%d orders were not delivered to %s", (int)delivery_errors, r->input);
    return 0;
}

/* Waits until the reader sees `target` orders. Fails when the daemon exits or
 * nothing more becomes visible for NO_PROGRESS_MS. */
static int wait_visible(struct run *r, int64_t target, const char *what)
{
    r->view.last_progress_ms = now_ms();
    while (r->view.visible < target) {
        view_poll(&r->view, 100);
        if (!daemon_alive(&r->daemon))
            return fail(r, "tally run exited while waiting for %s", what);
        if (now_ms() - r->view.last_progress_ms > NO_PROGRESS_MS)
            return fail(r, "%s: %lld of %lld orders visible, none more for %d s", what,
                        (long long)r->view.visible, (long long)target, NO_PROGRESS_MS / 1000);
    }
    return 0;
}

struct db_figures {
    int64_t windows, orders, seq;
    double sum;
};

/* Reads the state through the stable view, and the last changelog seq as
 * tally reads it. Returns 0, or -1 when the database cannot be read. */
static int db_read(const char *path, struct db_figures *f)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *stmt = NULL;
    int rc = -1;

    memset(f, 0, sizeof(*f));
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
        goto done;
    sqlite3_busy_timeout(db, 5000);
    if (sqlite3_prepare_v2(db,
                           "SELECT count(*), coalesce(sum(count), 0), "
                           "coalesce(sum(CAST(sum AS REAL)), 0), "
                           "(SELECT coalesce(max(seq), 0) FROM sqlite_sequence "
                           " WHERE name = 'changelog') FROM order_windows",
                           -1, &stmt, NULL) != SQLITE_OK ||
        sqlite3_step(stmt) != SQLITE_ROW)
        goto done;
    f->windows = sqlite3_column_int64(stmt, 0);
    f->orders = sqlite3_column_int64(stmt, 1);
    f->sum = sqlite3_column_double(stmt, 2);
    f->seq = sqlite3_column_int64(stmt, 3);
    rc = 0;
done:
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    return rc;
}

/* Waits until the database holds every order produced and, with `snapshot`,
 * until the daemon has logged a snapshot of exactly that state (its last_seq
 * is the database's). Returns 0, or -1 after timeout_ms. */
static int wait_db(struct run *r, bool snapshot, int64_t timeout_ms)
{
    int64_t deadline = now_ms() + timeout_ms;
    struct db_figures f;
    for (;;) {
        if (db_read(r->db, &f) == 0 && f.orders == r->produced &&
            (!snapshot || r->daemon.snapshot_seq == f.seq))
            return 0;
        if (!daemon_alive(&r->daemon))
            return fail(r, "tally run exited while waiting for its database");
        if (now_ms() > deadline)
            return fail(r, "the database holds %lld of %lld orders%s", (long long)f.orders,
                        (long long)r->produced,
                        snapshot ? ", or no snapshot of them was logged" : "");
        view_poll(&r->view, 50);
    }
}

/* Runs a command with its stdout discarded; returns its exit status or -1. */
static int run_command(char *const argv[])
{
    int status;
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen("/dev/null", "w", stdout))
            _exit(127);
        execv(argv[0], argv);
        _exit(127);
    }
    if (pid < 0 || waitpid(pid, &status, 0) < 0)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static int remove_tree(const char *path)
{
    return run_command((char *[]){"/bin/rm", "-rf", (char *)path, NULL});
}

/* Fresh names (a timestamp first), directories and topics of one partition
 * for one scenario, and the reader on its output. Returns 0 or -1. */
static int run_open(struct run *r, int64_t keys)
{
    static int serial;
    char reader_group[96];
    struct timespec wall;

    memset(r, 0, sizeof(*r));
    snprintf(r->prefix, sizeof(r->prefix), "rec%ld-%d-%d", (long)time(NULL), (int)getpid(),
             ++serial);
    snprintf(r->input, sizeof(r->input), "%s.in", r->prefix);
    snprintf(r->output, sizeof(r->output), "%s.out", r->prefix);
    snprintf(r->dir, sizeof(r->dir), "/tmp/%s", r->prefix);
    snprintf(r->state_dir, sizeof(r->state_dir), "%s/state", r->dir);
    snprintf(r->snapshot_dir, sizeof(r->snapshot_dir), "%s/snapshots", r->dir);
    snprintf(r->db, sizeof(r->db), "%s/orders.db", r->state_dir);
    snprintf(r->log, sizeof(r->log), "%s/tally.log", r->dir);
    snprintf(reader_group, sizeof(reader_group), "%s-reader", r->prefix);
    /* every order in the middle of the current minute: one 60 s window */
    clock_gettime(CLOCK_REALTIME, &wall);
    r->event_ms = (int64_t)wall.tv_sec / 60 * 60000 + 30000;
    if (mkdir(r->dir, 0755) < 0)
        return fail(r, "cannot create %s: %s", r->dir, strerror(errno));
    {
        /* clang-format off */
        char *create[] = {(char *)tally, "topics", "create", "--brokers", (char *)brokers,
                          "--pipeline", "orders", "--partitions", "1", "--topic-prefix", r->prefix,
                          "--input-topic", r->input, "--output-topic", r->output, NULL};
        /* clang-format on */
        if (run_command(create) != 0)
            return fail(r, "tally topics create failed");
    }
    return view_open(&r->view, r->output, reader_group, keys);
}

/* Stops what still runs; removes the files unless the scenario failed. */
static void run_close(struct run *r, bool failed)
{
    daemon_stop(&r->daemon, SIGKILL);
    view_close(&r->view);
    if (failed)
        fprintf(stderr, "bench_recovery: %s kept for a look\n", r->dir);
    else
        remove_tree(r->dir);
}

/* ------------------------------------------------------------------------ */
/* Scenarios                                                                 */
/* ------------------------------------------------------------------------ */

enum db_mode { DB_INTACT, DB_LOST, DB_NONE };
static const char *const db_mode_names[] = {"intact", "lost", "none"};

/* One order for each of keys 0..keys-1, with the daemon started. Returns 0 or -1. */
static int build_state(struct run *r, int64_t keys)
{
    for (int64_t k = 0; k < keys; k++)
        produce_key(r, k);
    if (flush(r) < 0)
        return -1;
    return wait_visible(r, r->produced, "the state");
}

/* value as text, or "-" for what was not logged (< 0) */
static const char *number(int64_t value, char *buf, size_t len)
{
    if (value < 0)
        return "-";
    snprintf(buf, len, "%lld", (long long)value);
    return buf;
}

/* Deletes what `mode` says after the kill. Returns 0 or -1. */
static int damage(struct run *r, enum db_mode mode)
{
    const char *suffixes[] = {"", "-wal", "-shm"};
    for (int i = 0; mode == DB_LOST && i < 3; i++) {
        char path[256];
        snprintf(path, sizeof(path), "%s%s", r->db, suffixes[i]);
        if (unlink(path) < 0 && errno != ENOENT)
            return fail(r, "cannot delete %s: %s", path, strerror(errno));
    }
    if (mode == DB_NONE && (remove_tree(r->state_dir) || remove_tree(r->snapshot_dir)))
        return fail(r, "cannot delete %s or %s", r->state_dir, r->snapshot_dir);
    return 0;
}

/* One kill -9 and restart; prints one bench=recovery line. Returns 0 if the
 * scenario ran to its end (exact or not), -1 if it could not. */
static int bench_recovery(int64_t keys, bool changelog, enum db_mode mode, int64_t tail,
                          int64_t interval_ms)
{
    struct run r;
    struct db_figures f = {0};
    struct daemon *d = &r.daemon;
    char interval[32], v[6][64], t[5][32];
    int64_t snapshot_ms, publish_ms, snapshot_bytes, deadline;
    bool exact;
    int rc = -1;

    if (run_open(&r, keys) < 0)
        goto done;
    snprintf(interval, sizeof(interval), "%lldms", (long long)interval_ms);
    if (daemon_start(&r, changelog, interval) < 0)
        goto done;
    /* One order and its snapshot come first, so the figure below is what a
     * later snapshot costs, not a process's first. */
    produce_key(&r, 0);
    if (flush(&r) < 0 || wait_db(&r, true, interval_ms + NO_PROGRESS_MS) < 0 ||
        build_state(&r, keys) < 0 || wait_db(&r, true, interval_ms + NO_PROGRESS_MS) < 0)
        goto done;
    snapshot_ms = d->snapshot_ms;
    publish_ms = d->publish_ms;
    snapshot_bytes = d->snapshot_bytes;
    daemon_stop(d, SIGTERM);

    if (daemon_start(&r, changelog, "0") < 0)
        goto done;
    for (int64_t i = 0; i < tail; i++)
        produce_key(&r, i % keys);
    /* Killed once idle: a kill between the Kafka and the SQLite commit of a
     * batch is what tests/kafka covers; here the figures should not depend on
     * where the kill happens to land. */
    if (flush(&r) < 0 || wait_visible(&r, r.produced, "the tail") < 0 ||
        wait_db(&r, false, NO_PROGRESS_MS) < 0)
        goto done;
    daemon_stop(d, SIGKILL);
    if (damage(&r, mode) < 0 || daemon_start(&r, changelog, interval) < 0)
        goto done;
    produce_order(&r, "marker", "m");
    if (flush(&r) < 0)
        goto done;
    deadline = now_ms() + 30 * 60000; /* a full replay of a large changelog takes a while */
    while (!r.view.marker_seen_ms) {
        view_poll(&r.view, 100);
        if (!daemon_alive(d) || now_ms() > deadline) {
            fail(&r, "the marker never became visible after the restart");
            goto done;
        }
    }
    /* the reader thread may not have read the lines before the marker's batch yet */
    for (int i = 0; i < 100 && (d->recovered_ms < 0 || d->first_commit_ms < 0); i++)
        usleep(10000);
    daemon_stop(d, SIGTERM);
    if (db_read(r.db, &f) < 0)
        fprintf(stderr, "bench_recovery: %s: cannot read %s\n", r.prefix, r.db);
    exact = f.windows == keys + 1 && f.orders == r.produced && f.sum == 1.25 * (double)r.produced &&
            r.view.visible == r.produced;
    printf(
        "bench=recovery keys=%lld changelog=%s db=%s tail=%lld ttr_ms=%lld ready_ms=%s "
        "recovered_ms=%s started_ms=%s first_commit_ms=%s source=%s tally_ttr_ms=%s "
        "records_replayed=%s bytes_replayed=%s input_reread=%s restored_snapshot=%s snapshot_ms=%lld "
        "publish_ms=%s snapshot_bytes=%lld orders=%lld db_orders=%lld exact=%s\n",
        (long long)keys, changelog ? "on" : "off", db_mode_names[mode], (long long)tail,
        (long long)(r.view.marker_seen_ms - d->exec_ms), number(d->ready_ms, t[0], 32),
        number(d->recovered_ms, t[1], 32), number(d->started_ms, t[2], 32),
        number(d->first_commit_ms, t[3], 32), field(d->recovered, "source", v[0], 64),
        field(d->recovered, "ttr_ms", v[1], 64), field(d->recovered, "records_replayed", v[2], 64),
        field(d->recovered, "bytes_replayed", v[3], 64),
        field(d->recovered, "input_reread", v[5], 64), field(d->recovered, "snapshot", v[4], 64),
        (long long)snapshot_ms, number(publish_ms, t[4], 32), (long long)snapshot_bytes,
        (long long)r.produced, (long long)f.orders, exact ? "yes" : "no");
    fflush(stdout);
    rc = 0;
done:
    run_close(&r, rc < 0);
    return rc;
}

/* A steady load on an N-key state, without and with snapshots every second;
 * prints one bench=recovery_stall line for each. Returns 0 or -1. */
static int bench_stall(int64_t keys, int64_t rate, int64_t seconds)
{
    struct run r;
    struct daemon *d = &r.daemon;
    uint64_t random = 0x9E3779B97F4A7C15ULL;
    int rc = -1;

    if (run_open(&r, keys) < 0 || daemon_start(&r, true, "0") < 0 || build_state(&r, keys) < 0)
        goto done;
    daemon_stop(d, SIGTERM);
    for (int every = 0; every <= 1000; every += 1000) {
        int64_t start, total = rate * seconds, i = 0, now;
        char interval[32];
        snprintf(interval, sizeof(interval), "%dms", every);
        if (daemon_start(&r, true, interval) < 0)
            goto done;
        /* the load starts once the daemon consumes: its startup is no stall */
        while (d->started_ms < 0) {
            if (!daemon_alive(d)) {
                fail(&r, "tally run exited before it started");
                goto done;
            }
            usleep(10000);
        }
        for (start = now = now_ms(); i < total || now < start + seconds * 1000; now = now_ms()) {
            while (i < total && start + i * 1000 / rate <= now) {
                random ^= random >> 12, random ^= random << 25, random ^= random >> 27;
                produce_key(&r, (int64_t)((random * 2685821657736338717ULL) % (uint64_t)keys));
                i++;
            }
            if (!r.view.gap_from_ms && now >= start + STALL_WARMUP_MS) {
                r.view.gap_from_ms = r.view.last_record_ms = now;
                r.view.max_gap_ms = 0;
                /* only the measured ones */
                d->snapshots = d->snapshot_ms_max = 0;
                d->publish_ms_max = d->publish_ms_max < 0 ? -1 : 0;
            }
            rd_kafka_poll(producer, 0);
            view_poll(&r.view, 5);
        }
        if (now - r.view.last_record_ms > r.view.max_gap_ms)
            r.view.max_gap_ms = now - r.view.last_record_ms;
        r.view.gap_from_ms = 0;
        if (flush(&r) < 0 || wait_visible(&r, r.produced, "the load") < 0)
            goto done;
        daemon_stop(d, SIGTERM);
        printf("bench=recovery_stall keys=%lld snapshot_interval_ms=%d rate=%lld duration_s=%lld "
               "max_gap_ms=%lld snapshots=%lld snapshot_ms_max=%lld publish_ms_max=%s "
               "snapshot_bytes=%lld visible=yes\n",
               (long long)keys, every, (long long)rate, (long long)seconds,
               (long long)r.view.max_gap_ms, (long long)d->snapshots, (long long)d->snapshot_ms_max,
               number(d->publish_ms_max, interval, sizeof(interval)), (long long)d->snapshot_bytes);
        fflush(stdout);
    }
    rc = 0;
done:
    run_close(&r, rc < 0);
    return rc;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_recovery --brokers B --tally PATH [--keys N[,N...]] (10000,100000)\n"
            "       [--changelog on|off|both] [--db intact,lost,none] [--tail N] (5000)\n"
            "       [--snapshot-interval S] (5) [--stall on|off] [--stall-rate N] (5000)\n"
            "       [--stall-seconds S] (20)\n");
    exit(2);
}

int main(int argc, char **argv)
{
    static const struct option options[] = {{"brokers", required_argument, NULL, 'b'},
                                            {"tally", required_argument, NULL, 't'},
                                            {"keys", required_argument, NULL, 'k'},
                                            {"changelog", required_argument, NULL, 'c'},
                                            {"db", required_argument, NULL, 'd'},
                                            {"tail", required_argument, NULL, 'T'},
                                            {"snapshot-interval", required_argument, NULL, 'i'},
                                            {"stall", required_argument, NULL, 's'},
                                            {"stall-rate", required_argument, NULL, 'r'},
                                            {"stall-seconds", required_argument, NULL, 'S'},
                                            {NULL, 0, NULL, 0}};
    const char *keys_arg = "10000,100000", *changelog_arg = "both", *db_arg = "intact,lost,none";
    int64_t keys[16], tail = 5000, interval_ms = 5000, rate = 5000, seconds = 20;
    int nkeys = 0, failures = 0, opt;
    bool stall = true;
    char list[256], errstr[256];
    rd_kafka_conf_t *conf;

    brokers = getenv("KAFKA_BROKERS");
    while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        switch (opt) {
        case 'b': brokers = optarg; break;
        case 't': tally = optarg; break;
        case 'k': keys_arg = optarg; break;
        case 'c': changelog_arg = optarg; break;
        case 'd': db_arg = optarg; break;
        case 'T': tail = atoll(optarg); break;
        case 'i': interval_ms = atoll(optarg) * 1000; break;
        case 's': stall = strcmp(optarg, "off") != 0; break;
        case 'r': rate = atoll(optarg); break;
        case 'S': seconds = atoll(optarg); break;
        default: usage();
        }
    }
    snprintf(list, sizeof(list), "%s", keys_arg);
    for (char *k = strtok(list, ","); k && nkeys < 16; k = strtok(NULL, ","))
        if ((keys[nkeys++] = atoll(k)) < 1)
            usage();
    if (!brokers || optind < argc || nkeys == 0 || tail < 1 || interval_ms < 1 || rate < 1 ||
        seconds * 1000 <= STALL_WARMUP_MS ||
        (strcmp(changelog_arg, "on") && strcmp(changelog_arg, "off") &&
         strcmp(changelog_arg, "both")))
        usage();

    conf = rd_kafka_conf_new();
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    if (rd_kafka_conf_set(conf, "bootstrap.servers", brokers, errstr, sizeof(errstr)) ||
        rd_kafka_conf_set(conf, "enable.idempotence", "true", errstr, sizeof(errstr)) ||
        rd_kafka_conf_set(conf, "linger.ms", "5", errstr, sizeof(errstr)) ||
        !(producer = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr)))) {
        fprintf(stderr, "bench_recovery: producer: %s\n", errstr);
        return 1;
    }
    for (int i = 0; i < nkeys; i++) {
        for (int c = 1; c >= 0; c--) {
            if (strcmp(changelog_arg, "both") && strcmp(changelog_arg, c ? "on" : "off"))
                continue;
            for (int m = DB_INTACT; m <= DB_NONE; m++)
                if (strstr(db_arg, db_mode_names[m]) && (c || m != DB_NONE))
                    failures += bench_recovery(keys[i], c, (enum db_mode)m, tail, interval_ms) < 0;
        }
        if (stall)
            failures += bench_stall(keys[i], rate, seconds) < 0;
    }
    rd_kafka_destroy(producer);
    return failures ? 1 : 0;
}
