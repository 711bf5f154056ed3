#!/usr/bin/env bash
# test_secure.sh - tally on a secured cluster: the test broker's SASL_SSL
# listener (SCRAM-SHA-512) and its SSL listener that wants a client
# certificate (scripts/kafka with KAFKA_SECURE=1 made the CA, the
# certificates, the SCRAM user and the librdkafka properties files). Every
# tally command gets its settings from --kafka-config / -X alone
# ($KAFKA_BROKERS unset); the test checks results through the plaintext
# listener.
#
# 1. `tally topics create` over SASL_SSL.
# 2. `tally produce` over SASL_SSL: every event it counts is on the topic.
# 3. `tally run` over SASL_SSL, exactly once through a kill -9 with the state
#    directory deleted (the restart restores a snapshot and replays the
#    changelog through SASL_SSL readers) and a second kill -9 once the
#    second part is being applied:
#    state, latest outputs, DLQ and input positions exact. Its log names the
#    settings with the password redacted; the password is in none of the log,
#    the database files, /metrics, --help.
# 4. `tally recover --dry-run` over SASL_SSL plans from the snapshot.
# 5. `tally publish` over mutual TLS (client certificate, encrypted key): the
#    latest record of every vehicle of an ingested file reaches the topic.
# 6. A wrong password, an untrusted CA, and a plaintext client against the TLS
#    listener each make `tally run` exit 1 within seconds, with a message
#    that names the cause.
# 7. Bad settings exit 2 before anything connects: a misspelled property
#    (librdkafka's message, and FILE:LINE for a file), a property tally owns
#    (with why), a file that does not exist.
# shellcheck source=../lib/tally.sh
source "$(dirname "$0")/../lib/tally.sh"

kafka_tls_dir
SCRAM=$TLS_DIR/sasl-scram.properties
MTLS=$TLS_DIR/mtls.properties
PASSWORD=$(secret_of "$SCRAM")
KEY_PASSWORD=$(secret_of "$MTLS")
[[ -n "$PASSWORD" && -n "$KEY_PASSWORD" ]] || fail "no passwords in $SCRAM / $MTLS (test bug)"
SSL_BROKER=$(sed -n 's/^bootstrap.servers=//p' "$MTLS")

new_stream orders.db
SNAPS=$WORK/snaps
HTTP_PORT=$(free_port)

# tally_sec ARGS...: tally with $KAFKA_BROKERS unset (the settings file must
# carry everything).
tally_sec() { env -u KAFKA_BROKERS "$TALLY" "$@"; }

# not_leaked WHAT FILE...: neither password is in any FILE.
not_leaked() {
    local what=$1
    shift
    if grep -qaF -e "$PASSWORD" -e "$KEY_PASSWORD" -e not-the-password "$@"; then
        fail "$what: a password appears in $(grep -laF -e "$PASSWORD" -e "$KEY_PASSWORD" -e not-the-password "$@" | tr '\n' ' ')"
    fi
    ok
}

# ---- 1. topics create -------------------------------------------------------
tally_sec topics create --kafka-config "$SCRAM" --pipeline orders --partitions 3 \
    --input-topic "$IN" --output-topic "$OUT" --topic-prefix "$PREFIX" >"$WORK/topics.out" 2>&1 ||
    fail "tally topics create over SASL_SSL failed: $(cat "$WORK/topics.out")"
assert_eq "topics created over SASL_SSL" 5 "$(grep -c 'status=created' "$WORK/topics.out")"
grep -qxF "topic=$PREFIX-changelog partitions=3 cleanup.policy=compact status=created" "$WORK/topics.out" ||
    fail "no compacted $PREFIX-changelog with 3 partitions: $(cat "$WORK/topics.out")"
ok

# ---- 2. produce ----------------------------------------------------------------
GEN=$(name gen)
create_topic "$GEN" 2
tally_sec produce --kafka-config "$SCRAM" --pipeline orders --topic "$GEN" --rate 3000 \
    --duration 1s >"$WORK/produce.out" 2>&1 || fail "tally produce over SASL_SSL failed: $(cat "$WORK/produce.out")"
assert_eq "events tally produce counted" 3000 "$(log_field "$(grep '^produced ' "$WORK/produce.out")" events)"
assert_eq "records on $GEN" 3000 "$(topic_records "$GEN")"

# ---- 3. tally run, exactly once through kill -9 ---------------------------------
: >"$WORK/orders.tsv"
gen_orders 3000 41 1 "$WORK/orders.tsv" >"$WORK/orders1.kv"
gen_orders 3000 42 3001 "$WORK/orders.tsv" >"$WORK/orders2.kv"
gen_malformed 5 sec >"$WORK/bad.kv"
mix "$WORK/orders1.kv" "$WORK/bad.kv" >"$WORK/input1.kv"
RUN_ARGS=(run --pipeline orders --kafka-config "$SCRAM" "${STREAM_ARGS[@]}" --snapshot-dir "$SNAPS"
    --snapshot-interval 500ms --max-batch 300 --http "127.0.0.1:$HTTP_PORT")
RUNS=0
sec_start() {
    local brokers=$KAFKA_BROKERS
    RUNS=$((RUNS + 1))
    LOG=$WORK/run$RUNS.log
    # tally without $KAFKA_BROKERS (the settings file must carry everything)
    unset KAFKA_BROKERS
    tally_bg "$LOG" "${RUN_ARGS[@]}"
    export KAFKA_BROKERS=$brokers
    tally_wait_started "$TALLY_PID" "$LOG"
}

produce "$IN" "$WORK/input1.kv"
sec_start
settings=$(grep -m1 'event=kafka_settings ' "$LOG" || true)
[[ "$settings" == *"security.protocol=SASL_SSL"* && "$settings" == *"sasl.password=[redacted]"* ]] ||
    fail "no event=kafka_settings line naming SASL_SSL with the password redacted: $settings"
ok
wait_done "$DB" 3000 "$PREFIX" 5 60 "$TALLY_PID"
wait_snapshot_of "$DB" "$LOG" 30 "$TALLY_PID"
curl -sS "http://127.0.0.1:$HTTP_PORT/metrics" >"$WORK/metrics.txt" || fail "cannot scrape /metrics"
[[ -s "$WORK/metrics.txt" ]] || fail "empty /metrics"
not_leaked "/metrics" "$WORK/metrics.txt"

# kill -9, state directory deleted: snapshot + changelog over SASL_SSL
tally_kill9 "$TALLY_PID"
rm -rf "$STATE"
produce "$IN" "$WORK/orders2.kv"
sec_start
recovered=$(grep -m1 'event=recovered ' "$LOG" || true)
assert_eq "source after the state directory was deleted" snapshot "$(log_field "$recovered" source)"
# kill -9 again once the second part is being applied
POLL_EVERY=0.05 poll_until 60 "$TALLY_PID" "orders of the second part applied" orders_above "$DB" 3000
tally_kill9 "$TALLY_PID"
sec_start
wait_done "$DB" 6000 "$PREFIX" 5 60 "$TALLY_PID"
tally_stop "$TALLY_PID"
check_totals "over SASL_SSL through two kill -9" "$WORK/orders.tsv" "$DB" "$OUT"
check_dlq "$PREFIX" "$IN" "$WORK/bad.kv"
check_positions "over SASL_SSL" "$DB" "$IN"
"$TALLY" run --help >"$WORK/help.out"
not_leaked "logs, database files, --help" "$WORK"/run*.log "$STATE"/orders.db* "$SNAPS"/* "$WORK/help.out"

# ---- 4. recover --dry-run ------------------------------------------------------
rm -f "$DB" "$DB-wal" "$DB-shm"
rc=0
tally_sec recover --dry-run --pipeline orders --kafka-config "$SCRAM" --input-topic "$IN" \
    --output-topic "$OUT" --topic-prefix "$PREFIX" --group-id "$GROUP" --instance-id "$INSTANCE" \
    --state-dir "$STATE" --snapshot-dir "$SNAPS" >"$WORK/plan.out" 2>&1 || rc=$?
assert_eq "tally recover --dry-run over SASL_SSL: exit status ($(tail -n 2 "$WORK/plan.out"))" 0 "$rc"
grep -qE '^source +snapshot ' "$WORK/plan.out" || fail "the plan restores no snapshot: $(cat "$WORK/plan.out")"
grep -qxF "changelog   $PREFIX-changelog, 3 partition(s)" "$WORK/plan.out" ||
    fail "the plan read no changelog over SASL_SSL: $(cat "$WORK/plan.out")"
ok

# ---- 5. publish over mutual TLS ------------------------------------------------
TOUT=$(name tout)
gen_readings 400 9 >"$WORK/readings.kv"
cut -d'|' -f2- "$WORK/readings.kv" >"$WORK/readings.jsonl"
"$TALLY" ingest --pipeline telemetry --db "$WORK/telemetry.db" "$WORK/readings.jsonl" >"$WORK/ingest.out" 2>&1 ||
    fail "tally ingest failed: $(cat "$WORK/ingest.out")"
create_topic "$TOUT" 2
since=$(date +%s%3N)
tally_sec publish --kafka-config "$MTLS" --db "$WORK/telemetry.db" --output-topic "$TOUT" --once \
    >"$WORK/publish.log" 2>&1 || fail "tally publish over mutual TLS failed: $(tail -n 3 "$WORK/publish.log")"
expected_latest "$WORK/readings.kv" >"$WORK/latest_expected_raw.tsv"
without_produced_at "$WORK/latest_expected_raw.tsv" >"$WORK/latest_expected.tsv"
latest_outputs "$TOUT" "$since" >"$WORK/latest_actual.tsv"
assert_files_eq "latest record per vehicle published over mutual TLS" "$WORK/latest_expected.tsv" "$WORK/latest_actual.tsv"
not_leaked "tally publish" "$WORK/publish.log"

# ---- 6. settings that cannot work fail fast ------------------------------------
# expect_fast WHAT PATTERN ARGS...: tally run with ARGS exits 1 within 10 s,
# its output matching PATTERN (grep -E) and holding no password.
expect_fast() {
    local what=$1 pattern=$2 rc=0 started=$SECONDS
    shift 2
    tally_sec run --pipeline orders --input-topic "$IN" --output-topic "$OUT" --topic-prefix "$PREFIX" \
        --group-id "$(name fast)" --instance-id "$(name fast)" --state-dir "$WORK/fast" --http off \
        "$@" >"$WORK/fast.out" 2>&1 || rc=$?
    assert_eq "$what: exit status ($(tail -n 1 "$WORK/fast.out" | cut -c1-300))" 1 "$rc"
    ((SECONDS - started <= 10)) || fail "$what: took $((SECONDS - started)) s to fail"
    grep -qE "$pattern" "$WORK/fast.out" || fail "$what: no /$pattern/ in: $(head -c 500 "$WORK/fast.out")"
    ok
    not_leaked "$what" "$WORK/fast.out"
}
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=another CA" \
    -keyout "$WORK/other-ca.key" -out "$WORK/other-ca.crt" >/dev/null 2>&1 || fail "openssl could not make a CA"
expect_fast "wrong SASL password" 'SASL authentication error.*check sasl' \
    --kafka-config "$SCRAM" -X sasl.password=not-the-password
expect_fast "untrusted CA" 'certificate verify failed.*check ssl.ca.location' \
    --kafka-config "$SCRAM" -X "ssl.ca.location=$WORK/other-ca.crt"
expect_fast "plaintext client on the TLS listener" 'security.protocol' --brokers "$SSL_BROKER"
expect_fast "client certificate missing" 'bad certificate.*check ssl.certificate.location' \
    --brokers "$SSL_BROKER" -X security.protocol=SSL -X "ssl.ca.location=$TLS_DIR/ca.crt"

# ---- 7. bad settings exit 2 before connecting ----------------------------------
# expect_usage WHAT PATTERN ARGS...: tally ARGS exits 2, output matching PATTERN.
expect_usage() {
    local what=$1 pattern=$2 rc=0
    shift 2
    tally_sec "$@" >"$WORK/usage.out" 2>&1 || rc=$?
    assert_eq "$what: exit status ($(head -c 300 "$WORK/usage.out"))" 2 "$rc"
    grep -qE -- "$pattern" "$WORK/usage.out" || fail "$what: no /$pattern/ in: $(head -c 500 "$WORK/usage.out")"
    ok
}
printf '# a comment\nsecurity.protocol=SASL_SSL\nsasl.mechanizm=PLAIN\n' >"$WORK/typo.properties"
expect_usage "misspelled -X" '-X: kafka setting sasl.mechanizm: No such configuration property' \
    run --pipeline orders --kafka-config "$SCRAM" -X sasl.mechanizm=PLAIN
expect_usage "misspelled in a file" "typo.properties:3: kafka setting sasl.mechanizm: No such configuration property" \
    topics create --pipeline orders --kafka-config "$WORK/typo.properties"
expect_usage "owned property" 'isolation.level cannot be set: tally reads with read_committed' \
    run --pipeline orders --kafka-config "$SCRAM" -X isolation.level=read_uncommitted
expect_usage "owned property on produce" 'enable.idempotence cannot be set' \
    produce --pipeline orders --kafka-config "$SCRAM" -X enable.idempotence=false
expect_usage "no such file" 'cannot read the Kafka settings file .*nope.properties' \
    publish --db "$WORK/telemetry.db" --kafka-config "$WORK/nope.properties"
expect_usage "no brokers anywhere" '--brokers is required' \
    run --pipeline orders -X security.protocol=SASL_SSL

finish "orders exact over SASL_SSL through 2 kills; publish over mTLS; 4 fast failures"
