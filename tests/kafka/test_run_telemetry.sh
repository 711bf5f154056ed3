#!/usr/bin/env bash
# test_run_telemetry.sh - `tally run --pipeline telemetry` on a real broker.
#
# 4000 readings for 25 vehicles x 6 sensors arrive out of order (received_at
# shuffled), over 3 partitions, with vehicles whose data.id is empty (skipped)
# and malformed payloads (dead-lettered). The latest committed output per VIN
# (read_committed, kcat) must equal the record awk computes: per sensor the value
# with the newest received_at, sensors in name order, received_at and
# produced_at the newest of the winning readings. The state's vehicle_latest
# view must hold the same records.
source "$(dirname "$0")/lib_run.sh"

N=4000
IN=$(name in)
OUT=$(name out)
PREFIX=$(name p)
DB=$WORK/state/telemetry.db
LOG=$WORK/run.log

create_topic "$IN" 3

# Readings: "VIN|json" lines; received_at is a permutation of 1..N (so no ties)
# plus a base; each reading carries one or two sensors.
awk -v n="$N" 'BEGIN {
    srand(42)
    for (i = 1; i <= n; i++) t[i] = i
    for (i = n; i > 1; i--) { j = int(rand() * i) + 1; x = t[i]; t[i] = t[j]; t[j] = x }
    split("battery,door,fuel,gear,speed,temp", names, ",")
    for (i = 1; i <= n; i++) {
        vin = sprintf("VIN%03d", int(rand() * 25))
        at = 1700000000000 + t[i]
        s1 = names[int(rand() * 6) + 1]
        v1 = (s1 == "door") ? (rand() < 0.5 ? "\"open\"" : "\"closed\"") : sprintf("%d.%d", int(rand() * 200), i % 10)
        data = sprintf("\"id\":\"%s\",\"%s\":%s", vin, s1, v1)
        if (rand() < 0.3) {
            s2 = names[int(rand() * 6) + 1]
            if (s2 != s1) {
                v2 = (s2 == "door") ? "\"open\"" : sprintf("%d", i)
                data = data sprintf(",\"%s\":%s", s2, v2)
            }
        }
        printf "%s|{\"data\":{%s},\"received_at\":%.0f,\"produced_at\":%.0f}\n", vin, data, at, at - 5
    }
}' >"$WORK/readings.kv"
printf 'x|{"data":{"id":"","speed":1},"received_at":5}\n%.0s' 1 2 3 >"$WORK/skipped.kv"
printf '%s\n' 'x|{"data":{"id":"VIN001","speed":1},"received_at":"soon"}' 'x|not json' \
    'x|{"data":"VIN001","received_at":5}' >"$WORK/bad.kv"
cat "$WORK/readings.kv" "$WORK/skipped.kv" "$WORK/bad.kv" | shuf --random-source=<(yes) >"$WORK/input.kv"
produce "$IN" "$WORK/input.kv"

# Expected latest record per VIN, computed from the readings alone.
sed 's/^[^|]*|//' "$WORK/readings.kv" | awk '
{
    line = $0
    # timestamps stay strings: mawk prints numbers above 2^31 as 1.7e+12
    match(line, /"received_at":[0-9]+/); at_s = substr(line, RSTART + 14, RLENGTH - 14); at = at_s + 0
    match(line, /"produced_at":[0-9]+/); pr_s = substr(line, RSTART + 14, RLENGTH - 14)
    match(line, /"data":\{[^}]*\}/); data = substr(line, RSTART + 8, RLENGTH - 9)
    n = split(data, parts, ",")
    split(parts[1], idkv, ":"); vin = idkv[2]; gsub(/"/, "", vin)
    for (k = 2; k <= n; k++) {
        split(parts[k], kv, ":"); s = kv[1]; gsub(/"/, "", s)
        key = vin SUBSEP s
        if (!(key in best) || at > best[key]) { best[key] = at; at_str[key] = at_s; val[key] = kv[2]; prod[key] = pr_s }
    }
}
END {
    for (key in best) {
        split(key, vk, SUBSEP); print vk[1] "\t" vk[2] "\t" val[key] "\t" at_str[key] "\t" prod[key]
    }
}' | sort -t $'\t' -k1,1 -k2,2 | awk -F'\t' '
function flush() {
    if (vin != "") printf "%s\t{\"data\":{\"id\":\"%s\"%s},\"received_at\":%s,\"produced_at\":%s}\n", vin, vin, body, maxat_s, maxpr_s
}
$1 != vin { flush(); vin = $1; body = ""; maxat = 0; maxpr = 0 }
{
    body = body ",\"" $2 "\":" $3
    if ($4 + 0 > maxat) { maxat = $4 + 0; maxat_s = $4 }
    if ($5 + 0 > maxpr) { maxpr = $5 + 0; maxpr_s = $5 }
}
END { flush() }' >"$WORK/expected.tsv"
[[ $(wc -l <"$WORK/expected.tsv") -eq 25 ]] || fail "expected 25 vehicles, awk made $(wc -l <"$WORK/expected.tsv")"

"$TALLY" run --pipeline telemetry --brokers "$KAFKA_BROKERS" --input-topic "$IN" --output-topic "$OUT" \
    --topic-prefix "$PREFIX" --group-id "$(name g)" --instance-id "$(name i)" \
    --state-dir "$WORK/state" --commit-interval-ms 50 --max-batch 300 >>"$LOG" 2>&1 &
TALLY_PID=$!
TALLY_PIDS+=("$TALLY_PID")
TALLY_LOGS+=("$LOG")
tally_wait_started "$TALLY_PID" "$LOG"

total=$(wc -l <"$WORK/input.kv")
limit=$((SECONDS + 120))
while :; do
    done_n=$(sqlval "$DB" "SELECT coalesce(sum(value), 0) FROM meta WHERE key IN ('pipeline.telemetry.events_applied', 'pipeline.telemetry.events_skipped', 'pipeline.telemetry.events_rejected')")
    [[ "${done_n:-0}" -ge "$total" ]] && break
    alive "$TALLY_PID" || fail "tally exited early: $(tail -n 3 "$LOG")"
    ((SECONDS < limit)) || fail "only ${done_n:-0} of $total readings done after 120 s"
    sleep 0.2
done
tally_stop "$TALLY_PID"

assert_eq "applied readings" "$N" "$(meta "$DB" pipeline.telemetry.events_applied)"
assert_eq "skipped (empty data.id)" 3 "$(meta "$DB" pipeline.telemetry.events_skipped)"
assert_eq "dead-lettered" 3 "$(meta "$DB" pipeline.telemetry.events_rejected)"
assert_eq "DLQ records" 3 "$(dlq_records "$PREFIX")"
[[ $(grep -c 'event=skip ' "$LOG") -eq 3 ]] || fail "expected 3 event=skip log lines"
ok

# Latest committed output per VIN: for one key, records stay in one partition
# in order, so the last one kcat prints is the latest.
read_topic "$OUT" '%k\t%s\n' | awk -F'\t' '{ latest[$1] = $2 } END { for (k in latest) print k "\t" latest[k] }' |
    sort >"$WORK/output.tsv"
assert_files_eq "latest output record per VIN" "$WORK/expected.tsv" "$WORK/output.tsv"

sqlite3 -batch -readonly "$DB" "SELECT vin || char(9) || record FROM vehicle_latest ORDER BY vin" >"$WORK/state.tsv"
assert_files_eq "vehicle_latest in the state" "$WORK/expected.tsv" "$WORK/state.tsv"

finish "$N readings, 25 vehicles"
