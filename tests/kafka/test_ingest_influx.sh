#!/usr/bin/env bash
# test_ingest_influx.sh - `tally ingest influxdb` between a real InfluxDB
# (Debian's influxd 1.x, started here on loopback with scripts/influxdb on a
# free 18xxx port and its own directories) and the real test broker.
#
# 1. One cycle: points of 3 pods and 6 vehicles (one vehicle reported by two
#    pods), 4 sensor types (float, integer, string, boolean), each point a
#    random subset of them, written in shuffled time order. What reaches Kafka
#    (kcat, read_committed) must be one record per VIN, keyed by VIN, equal to
#    what awk computes from the written points: per sensor the value with the
#    newest time, sensors in name order, received_at the newest reading;
#    produced_at an emit time. The same with a resource map (device ids of two
#    pods translated into VINs; a device the map lacks is skipped and counted).
#    The first cycle once more to the broker's SASL_SSL listener (settings
#    from a properties file only), and with a wrong password: exit 1 within
#    seconds, the reason named, no password in the output.
# 2. InfluxDB stopped mid-run: points stamped inside the outage (written
#    before it, with future times, so the data exists but cannot be read while
#    the server is down) all reach Kafka after it returns; retries and errors
#    are logged meanwhile, the checkpoint never passes the outage's start, and
#    the logged cycle ranges follow one another with no hole.
#    A query that hangs (influxd frozen with SIGSTOP) is abandoned at once on
#    SIGTERM, exit 0, checkpoint unchanged.
# 3. kill -9 while points keep arriving, then a restart: it resumes from the
#    checkpoint file (event=started from_ms = the file's end_ms), and every
#    point written before, during and after the kill reaches Kafka (repeats
#    are allowed); SIGTERM then exits 0 with the checkpoint at the last cycle.
# 4. The broker restarts (scripts/kafka restart) mid-run: the records of a
#    cycle that could not be delivered are produced again (ingest_retry
#    stage=produce) and every reading reaches the topic.
# 5. Bad flags exit 2 with a hint; a missing topic exits 1 with the command
#    that creates it.
#
# Each vehicle of parts 2 and 3 has a single reading, so "every reading
# reached Kafka" is "every VIN is on the topic with its value": a range that
# was skipped would leave VINs out.
# shellcheck source=../lib/tally.sh
source "$(dirname "$0")/../lib/tally.sh"

INFLUXDB_SCRIPT=$TALLY_SOURCE_DIR/scripts/influxdb
[[ -x "$INFLUXDB_SCRIPT" ]] || fail "$INFLUXDB_SCRIPT missing"
command -v curl >/dev/null || fail "curl is required"

# A free HTTP port and the one after it (influxd's RPC port), in 18100..18899.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
INFLUXDB_PORT=
for _try in $(seq 1 50); do
    _p=$((18100 + (RANDOM % 400) * 2))
    if ! port_busy "$_p" && ! port_busy $((_p + 1)); then INFLUXDB_PORT=$_p; break; fi
done
[[ -n "$INFLUXDB_PORT" ]] || fail "no free port pair in 18100..18899 for InfluxDB"
export INFLUXDB_PORT INFLUXDB_DATA_DIR=$WORK/influxdb
INFLUX_URL=http://127.0.0.1:$INFLUXDB_PORT
DB=tally_test

influx_stop_hook() {
    [[ -n "${INFLUXD_PID:-}" ]] && kill -CONT "$INFLUXD_PID" 2>/dev/null # if frozen by the test
    "$INFLUXDB_SCRIPT" stop >/dev/null 2>&1
}
CLEANUP_HOOKS+=(influx_stop_hook)

influx_start() {
    "$INFLUXDB_SCRIPT" start >"$WORK/influxdb.out" 2>&1 ||
        fail "scripts/influxdb start failed: $(tail -n 5 "$WORK/influxdb.out")"
}

# influx_write FILE: the line-protocol points of FILE, ms precision.
influx_write() {
    local code
    code=$(curl -sS -o "$WORK/write.out" -w '%{http_code}' -XPOST \
        "$INFLUX_URL/write?db=$DB&precision=ms" --data-binary "@$1") || fail "curl could not write to InfluxDB"
    [[ "$code" == 204 ]] || fail "InfluxDB refused the points of $1: HTTP $code $(cat "$WORK/write.out")"
}

now_ms() { date +%s%3N; }

# ingest_start LOG ARGS...: tally ingest influxdb in the background; TALLY_PID.
ingest_start() {
    local log=$1
    shift
    tally_bg "$log" ingest influxdb --url "$INFLUX_URL" --database "$DB" --brokers "$KAFKA_BROKERS" "$@"
}

# start_writer MEASUREMENT POD PODS VIN BASE N: in the background (WRITER),
# N points 100 ms apart, each stamped now: point i has pod=POD(i % PODS + 1),
# vin=VIN-i (3 digits) and speed=BASE+i.
start_writer() {
    (
        for i in $(seq 0 $(($6 - 1))); do
            printf '%s,pod=%s%d,vin=%s-%03d speed=%di %s\n' "$1" "$2" $((i % $3 + 1)) "$4" "$i" $(($5 + i)) \
                "$(now_ms)" >"$WORK/$1.lp"
            curl -sS -o /dev/null -XPOST "$INFLUX_URL/write?db=$DB&precision=ms" --data-binary "@$WORK/$1.lp" || exit 1
            sleep 0.1
        done
    ) &
    WRITER=$!
    bg_track "$WRITER"
}

# wait_cycle_past LOG MS PID SECONDS: until LOG has an ingest_cycle whose
# to_ms is beyond MS.
wait_cycle_past() { poll_until "$4" "$3" "ingest_cycle past $2" cycle_past "$1" "$2"; }

# cycle_past LOG MS: wait_cycle_past's check.
cycle_past() {
    [[ -f "$1" ]] || return 1
    POLL_STATE=$(tail -n 2 "$1" | cut -c1-300)
    awk -v ms="$2" '/event=ingest_cycle / { for (i = 1; i <= NF; i++) if ($i ~ /^to_ms=/) { t = substr($i, 7) + 0; if (t > ms + 0) found = 1 } }
        END { exit !found }' "$1"
}

# check_contiguous LOG: the ingest_cycle ranges follow one another exactly.
check_contiguous() {
    awk '/event=ingest_cycle / {
            for (i = 1; i <= NF; i++) { if ($i ~ /^from_ms=/) f = substr($i, 9); if ($i ~ /^to_ms=/) t = substr($i, 7) }
            if (n++ && f != prev) { print "cycle from_ms=" f " follows to_ms=" prev > "/dev/stderr"; bad = 1 }
            if (t + 0 <= f + 0) { print "empty or reversed range " f " " t > "/dev/stderr"; bad = 1 }
            prev = t }
         END { exit bad || n == 0 }' "$1" || fail "the cycle ranges in $1 are not contiguous"
    ok
}

# topic_readings TOPIC > "VIN<TAB>sensor<TAB>value" for every reading of every
# record on TOPIC, distinct, sorted (sqlite's JSON functions; no jq).
topic_readings() {
    local db=$WORK/readings-$1.db
    rm -f "$db"
    read_topic "$1" '%s\n' >"$WORK/records-$1.jsonl"
    jsonl_load_values "$db" "$WORK/records-$1.jsonl"
    sqlite3 -batch -bail -separator $'\t' "$db" "
        SELECT DISTINCT json_extract(m.j, '\$.data.id'), e.key, e.atom FROM m, json_each(m.j, '\$.data') e
        WHERE e.key <> 'id' ORDER BY 1, 2, 3"
}

jsonl_load_values() {
    sqlite3 -batch -bail "$1" "CREATE TABLE IF NOT EXISTS m(j TEXT)" '.mode ascii' \
        '.separator "\037" "\n"' ".import '$2' m"
}

sq1() { sqlite3 -batch -bail "$@"; }

# -------------------------------------------------------------- set up ---

influx_start
curl -sS -XPOST "$INFLUX_URL/query" --data-urlencode "q=CREATE DATABASE $DB" >/dev/null ||
    fail "cannot create the InfluxDB database"

# ===================================================== 1. one cycle ===

TOPIC1=$(name basic)
TOPIC1M=$(name mapped)
create_topic "$TOPIC1" 3
create_topic "$TOPIC1M" 2
T0=$(now_ms)
# 240 points, each of a pod and a VIN (VIN-C in pods p1 and p2), distinct
# times in [T0-26000, T0-2000], in shuffled order; each carries a random
# non-empty subset of speed (float), rpm (integer), door (string), ok (bool).
# Also to readings.tsv: VIN, sensor, time, value as InfluxDB answers it.
awk -v t0="$T0" -v seed=7 -v tsv="$WORK/readings.tsv" 'BEGIN {
    srand(seed); n = 240
    for (i = 0; i < n; i++) slot[i] = i
    for (i = n - 1; i > 0; i--) { j = int(rand() * (i + 1)); x = slot[i]; slot[i] = slot[j]; slot[j] = x }
    split("p1:VIN-A p1:VIN-B p1:VIN-C p2:VIN-C p2:VIN-D p3:VIN-E p3:VIN-F", series, " ")
    for (i = 0; i < n; i++) {
        split(series[int(rand() * 7) + 1], ps, ":")
        t = t0 - 2000 - slot[i] * 100
        fields = ""
        do {
            if (rand() < 0.5) { v = sprintf("%d.5", i); fields = fields ",speed=" v; printf "%s\tspeed\t%.0f\t%s\n", ps[2], t, v > tsv }
            if (rand() < 0.4) { v = sprintf("%d", i * 10); fields = fields ",rpm=" v "i"; printf "%s\trpm\t%.0f\t%s\n", ps[2], t, v > tsv }
            if (rand() < 0.3) { v = "d" i; fields = fields ",door=\"" v "\""; printf "%s\tdoor\t%.0f\t\"%s\"\n", ps[2], t, v > tsv }
            if (rand() < 0.3) { v = (i % 2) ? "true" : "false"; fields = fields ",ok=" v; printf "%s\tok\t%.0f\t%s\n", ps[2], t, v > tsv }
        } while (fields == "")
        printf "telemetry,pod=%s,vin=%s %s %.0f\n", ps[1], ps[2], substr(fields, 2), t
    }
}' >"$WORK/points.lp"
# A point of another pod and one without a VIN: neither may show up.
printf 'telemetry,pod=p9,vin=VIN-Z speed=1 %s\ntelemetry,pod=p1 speed=2 %s\n' $((T0 - 3000)) $((T0 - 3001)) >>"$WORK/points.lp"
influx_write "$WORK/points.lp"

# Expected: per (VIN, sensor) the newest value; a record per VIN with the
# sensors in name order and received_at the VIN's newest reading. (Times stay
# strings when printed: mawk would print 1.8e+12.)
awk -F'\t' '
    { key = $1 SUBSEP $2
      if (!(key in at) || $3 + 0 > at[key] + 0) { at[key] = $3; val[key] = $4 }
      if (!($1 in newest) || $3 + 0 > newest[$1] + 0) newest[$1] = $3 }
    END { for (k in val) { split(k, p, SUBSEP); print p[1] "\t" p[2] "\t" val[k] "\t" newest[p[1]] } }' \
    "$WORK/readings.tsv" | sort -t $'\t' -k1,1 -k2,2 | awk -F'\t' '
    function flush() { if (vin != "") printf "%s\t{\"data\":{\"id\":\"%s\"%s},\"received_at\":%s}\n", vin, vin, body, received }
    $1 != vin { flush(); vin = $1; body = "" }
    { body = body ",\"" $2 "\":" $3; received = $4 }
    END { flush() }' >"$WORK/expected.tsv"
assert_eq "vehicles in the generated points" 6 "$(wc -l <"$WORK/expected.tsv")"

LOG1=$WORK/basic.log
before=$(now_ms)
ingest_start "$LOG1" --pods p1,p2,p3 --output-topic "$TOPIC1" --lookback 40s --once
tally_wait_exit "$TALLY_PID" 60
after=$(now_ms)
assert_eq "--once exit status" 0 "$RC"
grep -q 'event=shutdown .*reason=caught_up' "$LOG1" || fail "no caught_up shutdown in $LOG1"
cycle=$(grep 'event=ingest_cycle ' "$LOG1" | head -n 1)
assert_eq "one cycle" 1 "$(grep -c 'event=ingest_cycle ' "$LOG1")"
assert_eq "cycle readings" "$(wc -l <"$WORK/readings.tsv")" "$(log_field "$cycle" readings)"
assert_eq "cycle readings without a VIN" 1 "$(log_field "$cycle" skipped)"
assert_eq "cycle vins" 6 "$(log_field "$cycle" vins)"
assert_eq "cycle messages" 6 "$(log_field "$cycle" messages)"
assert_eq "cycle pods" 3 "$(log_field "$cycle" pods)"
span=$(($(log_field "$cycle" to_ms) - $(log_field "$cycle" from_ms)))
assert_eq "chunks of 2 s over the range" $(((span + 1999) / 2000)) "$(log_field "$cycle" chunks)"
assert_eq "queries = chunks x pods" $(($(log_field "$cycle" chunks) * 3)) "$(log_field "$cycle" queries)"

read_topic "$TOPIC1" '%k\t%s\n' | sort >"$WORK/actual_raw.tsv"
assert_eq "records on $TOPIC1" 6 "$(wc -l <"$WORK/actual_raw.tsv")"
awk -F'\t' '{ k = $2; if (index(k, "{\"data\":{\"id\":\"" $1 "\"") != 1) { print "key " $1 " is not the record VIN: " k > "/dev/stderr"; bad = 1 } }
    END { exit bad }' "$WORK/actual_raw.tsv" || fail "a record's key is not its VIN"
awk -F'\t' -v lo="$before" -v hi="$after" '{ if (!match($2, /"produced_at":[0-9]+}$/)) { bad = 1; next }
    t = substr($2, RSTART + 14, RLENGTH - 15) + 0; if (t < lo + 0 || t > hi + 0) bad = 1 }
    END { exit bad }' "$WORK/actual_raw.tsv" || fail "produced_at is not the emit time (in [$before, $after])"
ok
without_produced_at "$WORK/actual_raw.tsv" >"$WORK/actual.tsv"
assert_files_eq "latest record per VIN" "$WORK/expected.tsv" "$WORK/actual.tsv"

# The same cycle to the broker's SASL_SSL listener (SCRAM-SHA-512), its
# settings from a librdkafka properties file alone (no --brokers, no
# $KAFKA_BROKERS); then with a wrong password: exit 1 at once, the reason
# named, the password nowhere in the output.
kafka_tls_dir
TOPIC1S=$(name sasl)
create_topic "$TOPIC1S" 2
rc=0
env -u KAFKA_BROKERS "$TALLY" ingest influxdb --url "$INFLUX_URL" --database "$DB" \
    --kafka-config "$TLS_DIR/sasl-scram.properties" --pods p1,p2,p3 --output-topic "$TOPIC1S" \
    --lookback 40s --once >"$WORK/sasl.log" 2>&1 || rc=$?
log_track "$WORK/sasl.log"
assert_eq "--once over SASL_SSL: exit status" 0 "$rc"
read_topic "$TOPIC1S" '%k\t%s\n' | sort >"$WORK/sasl_raw.tsv"
without_produced_at "$WORK/sasl_raw.tsv" >"$WORK/sasl.tsv"
assert_files_eq "latest record per VIN over SASL_SSL" "$WORK/expected.tsv" "$WORK/sasl.tsv"
rc=0
started=$SECONDS
env -u KAFKA_BROKERS "$TALLY" ingest influxdb --url "$INFLUX_URL" --database "$DB" \
    --kafka-config "$TLS_DIR/sasl-scram.properties" -X sasl.password=not-the-password \
    --pods p1 --output-topic "$TOPIC1S" --once >"$WORK/badpw.out" 2>&1 || rc=$?
assert_eq "--once with a wrong SASL password: exit status" 1 "$rc"
((SECONDS - started <= 10)) || fail "a wrong SASL password took $((SECONDS - started)) s to fail"
grep -q 'SASL authentication error' "$WORK/badpw.out" || fail "wrong password: no reason in: $(head -c 400 "$WORK/badpw.out")"
if grep -qF -e "$(secret_of "$TLS_DIR/sasl-scram.properties")" -e not-the-password "$WORK/badpw.out" "$WORK/sasl.log"; then
    fail "a SASL password appears in tally ingest influxdb's output"
fi
ok

# The same through a resource map: device ids, the same id in two pods.
cat >"$WORK/resource.map" <<'EOF'
# pod  device  vin
m1     dev-1   VIN-M11
m1     dev-2   VIN-M12
m2     dev-1   VIN-M21
EOF
printf '%s\n' \
    "fleet,site=m1,device=dev-1 speed=11.5,rpm=100i $((T0 - 5000))" \
    "fleet,site=m1,device=dev-1 speed=12.5 $((T0 - 4000))" \
    "fleet,site=m1,device=dev-1 rpm=90i $((T0 - 6000))" \
    "fleet,site=m1,device=dev-2 door=\"open\" $((T0 - 4500))" \
    "fleet,site=m2,device=dev-1 speed=21.5 $((T0 - 7000))" \
    "fleet,site=m2,device=dev-1 speed=20.5 $((T0 - 7500))" \
    "fleet,site=m2,device=dev-9 speed=99.5 $((T0 - 4000))" >"$WORK/fleet.lp"
influx_write "$WORK/fleet.lp"
LOG1M=$WORK/mapped.log
ingest_start "$LOG1M" --resource-map "$WORK/resource.map" --measurement fleet --pod-tag site \
    --output-topic "$TOPIC1M" --lookback 40s --once
tally_wait_exit "$TALLY_PID" 60
assert_eq "--once with a resource map: exit status" 0 "$RC"
cycle=$(grep 'event=ingest_cycle ' "$LOG1M" | head -n 1)
assert_eq "mapped: pods from the map" 2 "$(log_field "$cycle" pods)"
assert_eq "mapped: readings" 7 "$(log_field "$cycle" readings)"
assert_eq "mapped: unmapped device's reading skipped" 1 "$(log_field "$cycle" skipped)"
printf '%s\n' \
    "VIN-M11	{\"data\":{\"id\":\"VIN-M11\",\"rpm\":100,\"speed\":12.5},\"received_at\":$((T0 - 4000))}" \
    "VIN-M12	{\"data\":{\"id\":\"VIN-M12\",\"door\":\"open\"},\"received_at\":$((T0 - 4500))}" \
    "VIN-M21	{\"data\":{\"id\":\"VIN-M21\",\"speed\":21.5},\"received_at\":$((T0 - 7000))}" >"$WORK/expected_m.tsv"
read_topic "$TOPIC1M" '%k\t%s\n' | sort >"$WORK/actual_m_raw.tsv"
without_produced_at "$WORK/actual_m_raw.tsv" >"$WORK/actual_m.tsv"
assert_files_eq "records through the resource map" "$WORK/expected_m.tsv" "$WORK/actual_m.tsv"
note "one cycle: $(log_field "$(grep 'event=ingest_cycle ' "$LOG1")" readings) readings of 6 VINs exact; resource map exact"

# =========================================== 2. InfluxDB stopped mid-run ===

TOPIC2=$(name outage)
create_topic "$TOPIC2" 3
LOG2=$WORK/outage.log
CP2=$WORK/outage.checkpoint
ingest_start "$LOG2" --measurement gap --pods g1,g2 --output-topic "$TOPIC2" --interval 1s --lookback 2s --chunk 1s \
    --settle 500ms --checkpoint-path "$CP2" --retry-max-attempts 3 --retry-initial-interval 200ms \
    --retry-max-interval 1s
PID2=$TALLY_PID
wait_cycle_past "$LOG2" 0 "$PID2" 30

# Points stamped in the coming outage: T+4000 .. T+9900, one VIN each.
T=$(now_ms)
awk -v t="$T" 'BEGIN { for (i = 0; i < 60; i++) printf "gap,pod=g%d,vin=GAP-%02d speed=%di %.0f\n", i % 2 + 1, i, 1000 + i, t + 4000 + i * 100 }' \
    >"$WORK/outage.lp"
awk '{ split($1, tags, ","); split(tags[3], v, "="); split($2, f, "="); sub(/i$/, "", f[2]); print v[2] "\tspeed\t" f[2] }' \
    "$WORK/outage.lp" | sort >"$WORK/expected_outage.tsv"
influx_write "$WORK/outage.lp"
"$INFLUXDB_SCRIPT" stop --keep-data >/dev/null
stopped=$(now_ms)
# If the stop came after a cycle could read the first outage point, this run
# cannot tell a gap from a success: say so instead of passing.
((stopped < T + 3500)) || fail "InfluxDB took until T+$((stopped - T)) ms to stop; the test needs it down before T+3500"
# Down past the last outage point, and long enough for retries and a given-up cycle.
while (($(now_ms) < T + 11000)); do sleep 0.2; done
alive "$PID2" || fail "tally ingest influxdb died while InfluxDB was down: $(tail -n 3 "$LOG2")"
grep -q 'event=ingest_retry stage=query .*attempt=1 max_attempts=3 delay_ms=200 ' "$LOG2" ||
    fail "no ingest_retry (attempt 1, 200 ms) logged during the outage"
grep -q 'event=ingest_retry stage=query .*attempt=2 max_attempts=3 delay_ms=400 ' "$LOG2" ||
    fail "no second ingest_retry with a doubled delay"
grep -q 'event=ingest_error .*attempts=3 reason=' "$LOG2" || fail "no ingest_error after the last attempt"
ok
cp_during=$(sed -n 's/^tally-checkpoint 1 end_ms=\([0-9]*\)$/\1/p' "$CP2")
[[ -n "$cp_during" ]] || fail "no checkpoint in $CP2 during the outage"
((cp_during <= T + 4000)) || fail "the checkpoint moved to $cp_during, past the outage's first point $((T + 4000))"
ok
influx_start
T_BACK=$(now_ms)
# And points written after the return.
awk -v t="$T_BACK" 'BEGIN { for (i = 0; i < 10; i++) printf "gap,pod=g%d,vin=AFTER-%02d speed=%di %.0f\n", i % 2 + 1, i, 2000 + i, t + i * 50 }' \
    >"$WORK/after.lp"
influx_write "$WORK/after.lp"
awk '{ split($1, tags, ","); split(tags[3], v, "="); split($2, f, "="); sub(/i$/, "", f[2]); print v[2] "\tspeed\t" f[2] }' \
    "$WORK/after.lp" >>"$WORK/expected_outage.tsv"
sort -o "$WORK/expected_outage.tsv" "$WORK/expected_outage.tsv"
wait_cycle_past "$LOG2" $((T_BACK + 500)) "$PID2" 60
tally_stop "$PID2"
topic_readings "$TOPIC2" >"$WORK/actual_outage.tsv"
assert_files_eq "every reading of the outage window and after it" "$WORK/expected_outage.tsv" "$WORK/actual_outage.tsv"
check_contiguous "$LOG2"
last_cycle_to=$(grep 'event=ingest_cycle ' "$LOG2" | tail -n 1 | sed 's/.* to_ms=\([0-9]*\).*/\1/')
assert_eq "checkpoint = the last cycle's end" "tally-checkpoint 1 end_ms=$last_cycle_to" "$(cat "$CP2")"
note "outage: $(grep -c 'event=ingest_retry ' "$LOG2") retries, $(grep -c 'event=ingest_error ' "$LOG2") given-up cycles, 70 readings all delivered"

# A query that hangs (influxd frozen by SIGSTOP: the kernel accepts the
# connection, nobody answers) is abandoned on SIGTERM at once, not after the
# 60 s request timeout, and the checkpoint stays where it was.
cp_before=$(cat "$CP2")
INFLUXD_PID=$(cat "$INFLUXDB_DATA_DIR/influxd.pid")
kill -STOP "$INFLUXD_PID"
LOG2B=$WORK/frozen.log
ingest_start "$LOG2B" --measurement gap --pods g1,g2 --output-topic "$TOPIC2" --interval 1s \
    --checkpoint-path "$CP2" --timeout 60s
tally_wait_started "$TALLY_PID" "$LOG2B"
sleep 1.5
alive "$TALLY_PID" || fail "tally exited while influxd was frozen: $(tail -n 3 "$LOG2B")"
term_at=$(now_ms)
kill -TERM "$TALLY_PID"
tally_wait_exit "$TALLY_PID" 20
waited=$(($(now_ms) - term_at))
kill -CONT "$INFLUXD_PID"
assert_eq "SIGTERM during a hanging query: exit status" 0 "$RC"
((waited < 3000)) || fail "SIGTERM during a hanging query took $waited ms to end the process"
ok
assert_eq "no cycle while frozen" 0 "$(grep -c 'event=ingest_cycle ' "$LOG2B" || true)"
assert_eq "checkpoint untouched by the abandoned cycle" "$cp_before" "$(cat "$CP2")"
grep -q "event=shutdown checkpoint_ms=${cp_before##*=} reason=signal" "$LOG2B" ||
    fail "no shutdown line with the unchanged checkpoint: $(tail -n 1 "$LOG2B")"
ok

# ================================================ 3. kill -9, restart ===

TOPIC3=$(name restart)
create_topic "$TOPIC3" 3
LOG3=$WORK/restart.log
CP3=$WORK/restart.checkpoint
# --lookback 1s: a restart that ignored the checkpoint would start after the
# points written while it was down, and miss them.
ARGS3=(--measurement kills --pods k1,k2 --output-topic "$TOPIC3" --interval 500ms --lookback 1s --chunk 1s --settle 3s
    --checkpoint-path "$CP3")
# A writer: a point every 100 ms, stamped now, one VIN each, for 12 s.
start_writer kills k 2 KILL 3000 120
ingest_start "$LOG3" "${ARGS3[@]}"
PID3=$TALLY_PID
wait_cycle_past "$LOG3" 0 "$PID3" 30
sleep 3
tally_kill9 "$PID3"
cp_killed=$(sed -n 's/^tally-checkpoint 1 end_ms=\([0-9]*\)$/\1/p' "$CP3")
[[ -n "$cp_killed" ]] || fail "no checkpoint after the first run"
sleep 3 # points keep arriving while it is down
ingest_start "$LOG3" "${ARGS3[@]}"
PID3=$TALLY_PID
tally_wait_started "$PID3" "$LOG3"
started=$(grep 'event=started' "$LOG3" | tail -n 1)
assert_eq "restart resumes" true "$(log_field "$started" resumed)"
assert_eq "restart starts at the checkpoint" "$cp_killed" "$(log_field "$started" from_ms)"
wait "$WRITER" || fail "the point writer failed"
writer_done=$(now_ms)
wait_cycle_past "$LOG3" "$writer_done" "$PID3" 60
tally_stop "$PID3"
shutdown=$(grep 'event=shutdown' "$LOG3" | tail -n 1)
assert_eq "shutdown reason" signal "$(log_field "$shutdown" reason)"
assert_eq "checkpoint after SIGTERM = the logged one" "tally-checkpoint 1 end_ms=$(log_field "$shutdown" checkpoint_ms)" "$(cat "$CP3")"
# The second run's first range starts where the first run's checkpoint ended.
awk -v cp="$cp_killed" '/event=started/ { runs++ } /event=ingest_cycle / && runs == 2 && !seen { seen = 1; exit !(index($0, " from_ms=" cp " ") > 0) }' \
    "$LOG3" || fail "the restarted run's first cycle does not start at $cp_killed"
ok
for i in $(seq 0 119); do printf 'KILL-%03d\tspeed\t%d\n' "$i" $((3000 + i)); done >"$WORK/expected_kill.tsv"
topic_readings "$TOPIC3" >"$WORK/actual_kill.tsv"
assert_files_eq "every reading written before, during and after the kill" "$WORK/expected_kill.tsv" "$WORK/actual_kill.tsv"
note "kill -9: resumed from $cp_killed; $(read_topic "$TOPIC3" '.\n' | wc -l) records for 120 readings"

# ============================================ 4. the broker restarts ===

# scripts/kafka restart (SIGTERM, same data) while points keep arriving; with
# --delivery-timeout 1s the records of a cycle produced while the broker is
# down fail, the produce is retried (event=ingest_retry stage=produce), and
# every reading still reaches the topic.
broker_restartable
TOPIC4=$(name broker)
create_topic "$TOPIC4" 3
LOG4=$WORK/broker.log
start_writer brokers b 1 BRK 4000 100
ingest_start "$LOG4" --measurement brokers --pods b1 --output-topic "$TOPIC4" --interval 500ms \
    --lookback 1s --settle 2s --delivery-timeout 1s --retry-initial-interval 300ms \
    --retry-max-interval 1s --retry-max-attempts 3
PID4=$TALLY_PID
wait_cycle_past "$LOG4" 0 "$PID4" 30
sleep 2
broker_restart
wait "$WRITER" || fail "the point writer failed"
wait_cycle_past "$LOG4" "$(now_ms)" "$PID4" 90
tally_stop "$PID4"
for i in $(seq 0 99); do printf 'BRK-%03d\tspeed\t%d\n' "$i" $((4000 + i)); done >"$WORK/expected_broker.tsv"
topic_readings "$TOPIC4" >"$WORK/actual_broker.tsv"
assert_files_eq "every reading across the broker restart" "$WORK/expected_broker.tsv" "$WORK/actual_broker.tsv"
grep -q 'event=ingest_retry stage=produce .*reason="[0-9]* of [0-9]* record(s) not delivered' "$LOG4" ||
    fail "no produce retry logged while the broker was down"
ok
check_contiguous "$LOG4"
note "broker restart: $(grep -c 'event=ingest_retry stage=produce' "$LOG4") produce retries, 100 readings all delivered"

# ==================================================== 5. bad flags ===

expect_ingest_usage() {
    local what=$1 rc=0
    shift
    env -u KAFKA_BROKERS timeout 20 "$TALLY" ingest influxdb "$@" >"$WORK/usage.out" 2>"$WORK/usage.err" || rc=$?
    [[ "$rc" == 2 ]] || fail "$what: expected exit status 2, got $rc; stderr: $(head -c 300 "$WORK/usage.err")"
    grep -q "tally ingest influxdb --help" "$WORK/usage.err" || fail "$what: no hint in: $(head -c 300 "$WORK/usage.err")"
    ok
}
B=(--brokers "$KAFKA_BROKERS" --database "$DB")
expect_ingest_usage "no database" --brokers "$KAFKA_BROKERS" --pods a
expect_ingest_usage "no pods" "${B[@]}"
expect_ingest_usage "no brokers" --database "$DB" --pods a
expect_ingest_usage "bad interval" "${B[@]}" --pods a --interval soon
grep -q -- '--interval: invalid duration "soon"' "$WORK/usage.err" || fail "bad interval: message does not name the flag"
expect_ingest_usage "bad chunk" "${B[@]}" --pods a --chunk 0s
expect_ingest_usage "chunk over the cycle span" "${B[@]}" --pods a --chunk 2m
expect_ingest_usage "bad attempts" "${B[@]}" --pods a --retry-max-attempts 0
expect_ingest_usage "initial over max" "${B[@]}" --pods a --retry-initial-interval 1m --retry-max-interval 1s
expect_ingest_usage "token and username" "${B[@]}" --pods a --token t --username u --password p
expect_ingest_usage "username alone" "${B[@]}" --pods a --username u
expect_ingest_usage "https" "${B[@]}" --pods a --url https://127.0.0.1:8086
expect_ingest_usage "unknown flag" "${B[@]}" --pods a --bogus
expect_ingest_usage "missing value" "${B[@]}" --pods
expect_ingest_usage "empty pods" "${B[@]}" --pods ,
expect_ingest_usage "duplicate pod" "${B[@]}" --pods a,a
expect_ingest_usage "missing resource map" "${B[@]}" --resource-map "$WORK/nope.map"
expect_ingest_usage "pod not in the map" "${B[@]}" --resource-map "$WORK/resource.map" --pods m1,zz
expect_ingest_usage "extra argument" "${B[@]}" --pods a extra
expect_ingest_usage "bad delivery timeout" "${B[@]}" --pods a --delivery-timeout 5ms

"$TALLY" ingest influxdb --help >"$WORK/help.out"
grep -q -- '--checkpoint-path FILE' "$WORK/help.out" || fail "--help does not document --checkpoint-path"
ok
printf 'not a checkpoint\n' >"$WORK/bad.checkpoint"
rc=0
"$TALLY" ingest influxdb "${B[@]}" --url "$INFLUX_URL" --pods a --output-topic "$TOPIC1" \
    --checkpoint-path "$WORK/bad.checkpoint" --once >"$WORK/badcp.out" 2>"$WORK/badcp.err" || rc=$?
assert_eq "unreadable checkpoint: exit status" 1 "$rc"
grep -q 'is not a tally checkpoint' "$WORK/badcp.err" || fail "unreadable checkpoint: $(cat "$WORK/badcp.err")"
rc=0
"$TALLY" ingest influxdb "${B[@]}" --url "$INFLUX_URL" --pods a --output-topic "$(name nowhere)" --once \
    >"$WORK/notopic.out" 2>"$WORK/notopic.err" || rc=$?
assert_eq "missing topic: exit status" 1 "$rc"
grep -q 'tally topics create --pipeline telemetry' "$WORK/notopic.err" || fail "missing topic: no hint: $(cat "$WORK/notopic.err")"
ok

finish
