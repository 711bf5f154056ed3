# tests/lib/kafka.sh - the test broker: topics, producing and reading with
# kcat, offsets, the secured listeners (source it, do not run it; it sources
# assert.sh).
# shellcheck shell=bash
#
# Environment (set by tests/CMakeLists.txt; the broker is started by the
# kafka.start fixture with scripts/kafka):
#   KAFKA_BROKERS     bootstrap servers of the test broker
#                     (default 127.0.0.1:$KAFKA_PORT)
#   KAFKA_PORT        its port, for scripts/kafka (default: from KAFKA_BROKERS,
#                     else 9092)
#
# Everything a test creates on the broker is named after RUN_ID (a random
# suffix), so tests and repeated runs never share topics, groups or
# transactional ids.
#
# Provides:
#   $RUN_ID, $KAFKA_SCRIPT            the run's suffix, scripts/kafka
#   name SUFFIX                       a unique topic/group/instance name
#   stream_names [N]                  IN OUT PREFIX GROUP INSTANCE (names
#                                     in$N out$N p$N g$N i$N), STATE
#                                     ($WORK/state$N), TOPIC_ARGS and
#                                     STREAM_ARGS (the flags naming them)
#   broker_answers                    fails unless the broker answers kcat
#   have_topic_command                scripts/kafka's Apache broker serves
#                                     KAFKA_BROKERS (Kafka's TopicCommand works)
#   delete_run_topics                 the topics named $RUN_ID.*, best effort
#   ensure_broker                     starts the broker again if it is down
#   broker_restartable                the broker is Apache Kafka; a failing
#                                     test brings it up again on exit
#   broker_restart                    scripts/kafka restart (same data)
#   create_topic NAME PARTITIONS      via scripts/kafka topics
#   produce TOPIC FILE [PARTITION]    "key|value" lines to TOPIC (kcat)
#   produce_chunks TOPIC N            $WORK/chunk1.kv .. chunkN.kv, one a
#                                     second, in the background (PRODUCER)
#   wait_producer                     the background producer succeeded
#   offsets TOPIC -1|-2               "partition offset" (ends, beginnings)
#   partition_offsets ARGS...         kcat -Q ARGS as "partition offset" lines
#   end_offsets TOPIC                 "partition offset" (high watermarks)
#   begin_offsets TOPIC               "partition offset" (low watermarks)
#   topic_records TOPIC               records in a non-transactional topic
#   read_topic TOPIC FORMAT           every read_committed record (kcat -f)
#   open_transactions TOPIC P...      partitions with records of a
#                                     transaction still open
#   free_port                         a free loopback port
#   kafka_tls_dir                     sets TLS_DIR (secured listeners' files)
#   secret_of FILE                    the password a properties file holds

[[ -z "${TALLY_LIB_KAFKA:-}" ]] || return 0
TALLY_LIB_KAFKA=1

# shellcheck source=assert.sh
source "$(dirname "${BASH_SOURCE[0]}")/assert.sh"

command -v kcat >/dev/null || { echo "FAIL: kcat is required" >&2; exit 1; }
if [[ -z "${KAFKA_BROKERS:-}" ]]; then
    KAFKA_BROKERS=127.0.0.1:${KAFKA_PORT:-9092}
fi
if [[ -z "${KAFKA_PORT:-}" ]]; then
    KAFKA_PORT=${KAFKA_BROKERS##*:}
    KAFKA_PORT=${KAFKA_PORT%%,*}
fi
export KAFKA_PORT KAFKA_BROKERS
KAFKA_SCRIPT=$TALLY_SOURCE_DIR/scripts/kafka
[[ -x "$KAFKA_SCRIPT" ]] || { echo "FAIL: $KAFKA_SCRIPT missing" >&2; exit 1; }

RUN_ID="$(date +%s)$((RANDOM % 1000))$((RANDOM % 1000))"

# name SUFFIX: a name no other test or run uses.
name() { echo "tr-${TEST_NAME#test_run_}-$RUN_ID-$1"; }

# stream_names [N]: the names of one stream of a test (N tells several apart)
# and the flags that pass them, with the commit interval every test uses.
stream_names() {
    local n=${1:-}
    IN=$(name "in$n")
    OUT=$(name "out$n")
    PREFIX=$(name "p$n")
    GROUP=$(name "g$n")
    INSTANCE=$(name "i$n")
    STATE=$WORK/state$n
    TOPIC_ARGS=(--input-topic "$IN" --output-topic "$OUT" --topic-prefix "$PREFIX" --group-id "$GROUP")
    STREAM_ARGS=("${TOPIC_ARGS[@]}" --instance-id "$INSTANCE" --state-dir "$STATE" --commit-interval-ms 50)
}

# ------------------------------------------------------------- broker ---

broker_answers() {
    kcat -b "$KAFKA_BROKERS" -L -m 10 >/dev/null 2>&1 ||
        fail "no Kafka broker answers on $KAFKA_BROKERS (start one with scripts/kafka start)"
}

# have_topic_command: KAFKA_BROKERS is scripts/kafka's Apache broker, whose
# TopicCommand reads topic configurations (kcat cannot) and deletes topics.
have_topic_command() {
    [[ "$KAFKA_BROKERS" == "127.0.0.1:$KAFKA_PORT" ]] && "$KAFKA_SCRIPT" status 2>/dev/null | grep -q 'Apache Kafka'
}

# delete_run_topics: removes the topics named $RUN_ID.*, best effort, so
# reruns do not fill the broker (a CLEANUP_HOOKS entry).
delete_run_topics() {
    if have_topic_command; then
        "$KAFKA_SCRIPT" topics --delete --topic "$RUN_ID.*" >/dev/null 2>&1 || true
    fi
}

# ensure_broker: if a test fails while the broker is down, bring one up again
# for the other tests (a fresh one if the data cannot be used).
ensure_broker() {
    "$KAFKA_SCRIPT" status >/dev/null 2>&1 && return 0
    echo "[$TEST_NAME] the broker is down; starting it again" >&2
    "$KAFKA_SCRIPT" start >&2 || true
}

# broker_restartable: for tests that restart the broker: it must be Apache
# Kafka, and the exit trap brings it up again if the test left it down.
broker_restartable() {
    CLEANUP_HOOKS+=(ensure_broker)
    "$KAFKA_SCRIPT" status >/dev/null || fail "no broker up on port $KAFKA_PORT (scripts/kafka status)"
    [[ "$("$KAFKA_SCRIPT" status)" == *"Apache Kafka"* ]] ||
        fail "scripts/kafka restart needs Apache Kafka: $("$KAFKA_SCRIPT" status)"
}

# broker_restart: scripts/kafka restart (SIGTERM, same data directory).
broker_restart() {
    "$KAFKA_SCRIPT" restart >"$WORK/restart.out" 2>&1 ||
        fail "scripts/kafka restart failed: $(tail -n 3 "$WORK/restart.out")"
}

# ------------------------------------------------------------- topics ---

create_topic() {
    if ! "$KAFKA_SCRIPT" topics --create --topic "$1" --partitions "$2" --replication-factor 1 \
        >"$WORK/topics.out" 2>&1; then
        cat "$WORK/topics.out" >&2
        fail "cannot create topic $1 with scripts/kafka topics"
    fi
}

# produce TOPIC FILE [PARTITION]: every "key|value" line of FILE as one record
# (all to PARTITION if given, else by key).
produce() {
    local lines to=()
    lines=$(wc -l <"$2")
    [[ -z "${3:-}" ]] || to=(-p "$3")
    if ! timeout 120 kcat -b "$KAFKA_BROKERS" -P -t "$1" "${to[@]}" -K '|' -l -X acks=all "$2" \
        2>"$WORK/produce.err"; then
        cat "$WORK/produce.err" >&2
        fail "kcat could not produce $lines records to $1${3:+ partition $3}"
    fi
    if [[ -s "$WORK/produce.err" ]]; then
        cat "$WORK/produce.err" >&2
        fail "kcat reported errors producing to $1"
    fi
}

# produce_chunks TOPIC N: $WORK/chunk1.kv to chunkN.kv, one a second, in the
# background (the input keeps arriving while the test does other things);
# sets PRODUCER. wait_producer checks it.
produce_chunks() {
    (
        for ((c = 1; c <= $2; c++)); do
            sleep 1
            produce "$1" "$WORK/chunk$c.kv"
        done
    ) &
    PRODUCER=$!
    bg_track "$PRODUCER"
}

wait_producer() {
    if wait "$PRODUCER"; then :; else fail "the background producer failed"; fi
}

# offsets TOPIC -1|-2 [ISOLATION]: "partition offset" per partition (-1: the
# ends, -2: the beginnings).
offsets() {
    local parts p args=()
    parts=$(timeout 30 kcat -b "$KAFKA_BROKERS" -L -t "$1" 2>/dev/null | grep -c '^ *partition ') ||
        fail "no metadata for topic $1"
    for ((p = 0; p < parts; p++)); do args+=(-t "$1:$p:$2"); done
    partition_offsets "${args[@]}"
}

# partition_offsets [-X ...] -t TOPIC:P:WHICH...: kcat -Q as "partition
# offset" lines.
partition_offsets() {
    timeout 30 kcat -b "$KAFKA_BROKERS" -Q "$@" |
        awk '{ p = $2; gsub(/[][]/, "", p); print p, $4 }' | sort -n
}

# end_offsets TOPIC: "partition offset" per partition (the high watermarks).
end_offsets() { offsets "$1" -1; }

# begin_offsets TOPIC: "partition offset" per partition (the low watermarks).
begin_offsets() { offsets "$1" -2; }

# topic_records TOPIC: the number of records in TOPIC (sum of end offsets;
# only for topics written without transactions).
topic_records() { end_offsets "$1" | awk '{ n += $2 } END { printf "%.0f\n", n }'; }

# read_topic TOPIC FORMAT: every committed record of TOPIC, formatted by kcat.
read_topic() {
    timeout 120 kcat -b "$KAFKA_BROKERS" -C -t "$1" -o beginning -e -q \
        -X isolation.level=read_committed -f "$2" ||
        fail "kcat could not read $1"
}

# open_transactions TOPIC PARTITION...: those PARTITIONs of TOPIC that hold
# records of a transaction still open: their read_committed end (the last
# stable offset) is below their high watermark.
open_transactions() {
    local topic=$1 p args=()
    shift
    for p in "$@"; do args+=(-t "$topic:$p:-1"); done
    paste -d' ' \
        <(partition_offsets -X isolation.level=read_committed "${args[@]}" 2>/dev/null) \
        <(partition_offsets -X isolation.level=read_uncommitted "${args[@]}" 2>/dev/null) |
        awk '$1 == $3 && $2 < $4 { print $1 }'
}

# -------------------------------------------------------------- ports ---

# free_port: a loopback port nothing listens on, below the ephemeral range,
# never one of the brokers' ports nor tally's default.
free_port() {
    local base p i
    base=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
    for ((i = 0; i < 500; i++)); do
        p=$((base + i))
        case $p in 9092 | 9392 | 9464 | 19092 | 29092 | 39092 | "$KAFKA_PORT" | $((KAFKA_PORT + 1))) continue ;; esac
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    fail "no free loopback port from $base on"
}

# ------------------------------------------------------- secured mode ---

# kafka_tls_dir: sets TLS_DIR to where scripts/kafka (KAFKA_SECURE=1) put
# the CA, the client certificate and the librdkafka properties files of its
# secured listeners.
kafka_tls_dir() {
    TLS_DIR=${KAFKA_DATA_DIR:-${TMPDIR:-/tmp}/tally-kafka-$KAFKA_PORT}/tls
    [[ -f "$TLS_DIR/sasl-scram.properties" ]] ||
        fail "the test broker has no secured listeners ($TLS_DIR/sasl-scram.properties missing; start it with KAFKA_SECURE=1)"
}

# secret_of FILE: the sasl.password (or ssl.key.password) a properties file holds.
secret_of() { sed -n 's/^\(sasl\|ssl\.key\)\.password=//p' "$1" | head -n 1; }
