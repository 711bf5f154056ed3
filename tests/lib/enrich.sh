# tests/lib/enrich.sh - the `tally enrich` tests' raw orders and checks
# (source it, do not run it; it sources tally.sh).
# shellcheck shell=bash
#
# Provides:
#   enrich_start LOG ARGS...          `tally enrich` in the background (HTTP
#                                     off); sets TALLY_PID
#   gen_raw_orders N SEED FIRST EXP   "key|json" raw orders on stdout, with ts as
#                                     epoch ms, epoch seconds (also fractional)
#                                     or RFC 3339 (Z or an offset, fractions of
#                                     1 to 9 digits); appends to EXP per order
#                                     "orderId<TAB>storeId<TAB>expected output
#                                     value" (normTs computed here, in awk)
#   dup_lines FILE SEED               every line once, some twice or three times
#   gen_bad_raw N TAG BAD REASONS     malformed raw orders: "key|value" lines to
#                                     BAD, "value<TAB>reason" lines to REASONS
#   gen_dup_chunks GEN EXP SEED CHUNK_SEED DUP_SEED DUP_CHUNK_SEED
#                                     $WORK/chunk0.kv .. chunkN.kv: orders with
#                                     copies, copies of earlier chunks' orders,
#                                     malformed records
#   enriched_outputs TOPIC            "orderId<TAB>key<TAB>value" per committed
#                                     record of TOPIC, sorted
#   check_enriched WHAT TOPIC EXP     TOPIC holds each expected record exactly
#                                     once and nothing else
#   check_dlq_reasons PREFIX REASONS  the DLQ holds each malformed value once,
#                                     its tally.error naming the expected reason

[[ -z "${TALLY_LIB_ENRICH:-}" ]] || return 0
TALLY_LIB_ENRICH=1

# shellcheck source=tally.sh
source "$(dirname "${BASH_SOURCE[0]}")/tally.sh"

# enrich_start LOG ARGS...
enrich_start() {
    local log=$1
    shift
    tally_bg "$log" enrich --brokers "$KAFKA_BROKERS" --http off "$@"
}

# gen_raw_orders N SEED FIRST_ID EXPECTED > "key|json" lines. The key is the
# orderId, so the copies of one order share a partition. normTs is computed
# from the epoch milliseconds the generator starts from, independently of how
# tally parses: RFC 3339 text is made from them with the civil-from-days
# algorithm (the inverse of the one tally uses).
gen_raw_orders() {
    awk -v n="$1" -v seed="$2" -v first="$3" -v expf="$4" '
    function rnd(m) { seed = (seed * 16807) % 2147483647; return seed % m }
    function civil(z,   era, doe, yoe, doy, mp) {
        z += 719468; era = int(z / 146097); doe = z - era * 146097
        yoe = int((doe - int(doe / 1460) + int(doe / 36524) - int(doe / 146096)) / 365)
        Y = yoe + era * 400; doy = doe - (365 * yoe + int(yoe / 4) - int(yoe / 100))
        mp = int((5 * doy + 2) / 153); D = doy - int((153 * mp + 2) / 5) + 1
        M = mp < 10 ? mp + 3 : mp - 9; if (M <= 2) Y++
    }
    # rfc(ms, offset minutes, fraction digits)
    function rfc(t, off, digits,   local, days, rest, h, mi, s, frac, extra, sign, a) {
        local = t + off * 60000
        days = int(local / 86400000); rest = local - days * 86400000
        civil(days)
        h = int(rest / 3600000); mi = int((rest % 3600000) / 60000); s = int((rest % 60000) / 1000)
        frac = ""
        if (digits > 0) {
            frac = sprintf(".%03d", rest % 1000)
            if (digits < 3) frac = substr(frac, 1, digits + 1)
            for (extra = 3; extra < digits; extra++) frac = frac rnd(10)
        }
        if (off == 0 && rnd(2) == 0) zone = "Z"
        else { sign = off < 0 ? "-" : "+"; a = off < 0 ? -off : off; zone = sprintf("%s%02d:%02d", sign, int(a / 60), a % 60) }
        return sprintf("%04d-%02d-%02dT%02d:%02d:%02d%s%s", Y, M, D, h, mi, s, frac, zone)
    }
    BEGIN {
        split("-480 -270 0 0 60 330 420 525 840", offsets, " ")
        for (i = 0; i < n; i++) {
            id = first + i
            st = "s" rnd(4); pr = "p" rnd(5)
            t = 1700000000000 + rnd(2000000000)
            qty = 1 + rnd(20)
            price = sprintf("%d.%02d", rnd(1000), rnd(100))
            if (rnd(3) == 0) price = "\"" price "\""
            form = id % 6
            if (form == 0) { ts = sprintf("%.0f", t); norm = t }
            else if (form == 1) { sec = int(t / 1000); ts = sprintf("%.0f", sec); norm = sec * 1000 }
            else if (form == 2) { sec = int(t / 1000); ms = t % 1000
                                  ts = sprintf("%.0f.%03d%d", sec, ms, rnd(10)); norm = sec * 1000 + ms }
            else {
                digits = (form == 3) ? 0 : (form == 4 ? 3 : 1 + rnd(9))
                frac_ms = t % 1000
                if (digits == 0) frac_ms = 0
                else if (digits == 1) frac_ms = int(frac_ms / 100) * 100
                else if (digits == 2) frac_ms = int(frac_ms / 10) * 10
                t = t - (t % 1000) + frac_ms
                ts = "\"" rfc(t, offsets[1 + rnd(9)], digits) "\""; norm = t
            }
            value = sprintf("{\"orderId\":\"o%d\",\"productId\":\"%s\",\"storeId\":\"%s\",\"price\":%s,\"qty\":%d,\"ts\":%s}", id, pr, st, price, qty, ts)
            printf "o%d|%s\n", id, value
            printf "o%d\t%s\t%s,\"normTs\":%.0f,\"validated\":true}\n", id, st, substr(value, 1, length(value) - 1), norm >> expf
        }
    }'
}

# dup_lines FILE SEED: each line once, a third of them twice, a sixth three times.
dup_lines() {
    awk -v seed="$2" 'function rnd(m) { seed = (seed * 16807) % 2147483647; return seed % m }
        { print; k = rnd(6); if (k <= 1) print; if (k == 0) print }' "$1"
}

# gen_bad_raw N TAG BAD REASONS: one malformed raw order per class in turn.
gen_bad_raw() {
    awk -v n="$1" -v tag="$2" -v bad="$3" -v reasons="$4" '
    BEGIN {
        for (i = 0; i < n; i++) {
            id = "bad-" tag "-" i; k = i % 11
            head = "{\"orderId\":\"" id "\",\"productId\":\"p1\",\"storeId\":\"s1\","
            if (k == 0) { v = "not json " id; r = "invalid JSON" }
            else if (k == 1) { v = "{\"orderId\":\"" id "\",\"productId\":\"p1\",\"price\":1.5,\"qty\":1,\"ts\":1700000000000}"; r = "missing field \"storeId\"" }
            else if (k == 2) { v = head "\"price\":1.5,\"qty\":1}"; r = "missing field \"ts\"" }
            else if (k == 3) { v = head "\"price\":\"abc\",\"qty\":1,\"ts\":1700000000000}"; r = "field \"price\"" }
            else if (k == 4) { v = head "\"price\":1.5,\"qty\":\"2\",\"ts\":1700000000000}"; r = "field \"qty\" must be an integer" }
            else if (k == 5) { v = head "\"price\":-0.01,\"qty\":1,\"ts\":1700000000000}"; r = "price must be >= 0" }
            else if (k == 6) { v = head "\"price\":1.5,\"qty\":0,\"ts\":1700000000000}"; r = "qty must be > 0" }
            else if (k == 7) { v = head "\"price\":1.5,\"qty\":1,\"ts\":\"2024-13-40T00:00:00Z\"}"; r = "no such date" }
            else if (k == 8) { v = head "\"price\":1.5,\"qty\":1,\"ts\":\"yesterday\"}"; r = "is not a time" }
            else if (k == 9) { v = head "\"price\":1.5,\"qty\":1,\"ts\":true}"; r = "field \"ts\" must be" }
            else { v = "[\"" id "\",1,2]"; r = "must be a JSON object" }
            print id "|" v >> bad
            print v "\t" r >> reasons
        }
    }'
}

# gen_dup_chunks GEN EXPECTED SEED CHUNK_SEED DUP_SEED DUP_CHUNK_SEED: the
# input of a run that keeps receiving orders, from N_PRE, CHUNKS, N_CHUNK,
# N_AGAIN and BAD_PER_CHUNK. $WORK/chunk0.kv: N_PRE orders of GEN (gen_orders
# or gen_raw_orders, seeded SEED; their expectations appended to EXPECTED),
# some sent two or three times (dup_lines, DUP_SEED), and 11 malformed
# records; $WORK/chunk1.kv to chunkCHUNKS.kv: N_CHUNK new orders each (seeded
# CHUNK_SEED + c) with copies (DUP_CHUNK_SEED + c), N_AGAIN copies of orders
# of earlier chunks, and BAD_PER_CHUNK malformed records. Every malformed
# record goes to $WORK/bad.kv, its reason to $WORK/reasons.tsv. Sets N_VALID
# (distinct orders) and N_BAD (malformed records).
gen_dup_chunks() {
    local gen=$1 expected=$2 c
    : >"$expected"
    : >"$WORK/bad.kv"
    : >"$WORK/reasons.tsv"
    "$gen" "$N_PRE" "$3" 1 "$expected" >"$WORK/orders0.kv"
    gen_bad_raw 11 pre "$WORK/bad.kv" "$WORK/reasons.tsv"
    dup_lines "$WORK/orders0.kv" "$5" >"$WORK/dup0.kv"
    mix "$WORK/dup0.kv" "$WORK/bad.kv" >"$WORK/chunk0.kv"
    for ((c = 1; c <= CHUNKS; c++)); do
        "$gen" "$N_CHUNK" $(($4 + c)) $((N_PRE + (c - 1) * N_CHUNK + 1)) "$expected" >"$WORK/orders$c.kv"
        : >"$WORK/bad$c.kv"
        gen_bad_raw "$BAD_PER_CHUNK" "chunk$c" "$WORK/bad$c.kv" "$WORK/reasons.tsv"
        cat "$WORK/bad$c.kv" >>"$WORK/bad.kv"
        dup_lines "$WORK/orders$c.kv" $(($6 + c)) >"$WORK/dup$c.kv"
        # copies of orders that earlier chunks (or the first batch) already sent
        cat "$WORK"/orders[0-9]*.kv | grep -v -F -f <(cut -d'|' -f1 "$WORK/orders$c.kv" | sed 's/$/|/') |
            shuf -n "$N_AGAIN" --random-source=<(yes "$c") >"$WORK/again$c.kv"
        mix "$WORK/dup$c.kv" "$WORK/again$c.kv" "$WORK/bad$c.kv" >"$WORK/chunk$c.kv"
    done
    N_VALID=$(wc -l <"$expected")
    N_BAD=$(wc -l <"$WORK/bad.kv")
}

# enriched_outputs TOPIC: "orderId<TAB>key<TAB>value" per committed record.
enriched_outputs() {
    read_topic "$1" '%k\t%s\n' | awk -F'\t' '{
        if (!match($2, /"orderId":"[^"]*"/)) { print "no orderId in output: " $0 > "/dev/stderr"; exit 1 }
        print substr($2, RSTART + 11, RLENGTH - 12) "\t" $0 }' | sort ||
        fail "the output topic $1 holds a record without an orderId"
}

# check_enriched WHAT TOPIC EXPECTED: every expected record exactly once.
check_enriched() {
    local what=$1 topic=$2 expected=$3
    enriched_outputs "$topic" >"$WORK/enriched.actual"
    sort "$expected" >"$WORK/enriched.expected"
    if ! cmp -s "$WORK/enriched.expected" "$WORK/enriched.actual"; then
        note "$what: orderIds in $topic more often than expected: $(cut -f1 "$WORK/enriched.actual" |
            uniq -c | awk '$1 > 1 { print $2 }' | head -5 | tr '\n' ' ')(of $(wc -l <"$WORK/enriched.actual") records, $(wc -l <"$WORK/enriched.expected") expected)"
    fi
    assert_files_eq "$what: records in $topic (read_committed) vs expected, once each" \
        "$WORK/enriched.expected" "$WORK/enriched.actual"
}

# check_dlq_reasons PREFIX REASONS: each malformed value once in the DLQ,
# with its expected reason in tally.error.
check_dlq_reasons() {
    local prefix=$1 reasons=$2
    cut -f1 "$reasons" | sort >"$WORK/dlq.expected"
    read_topic "$prefix-dlq" '%s\n' | sort >"$WORK/dlq.actual"
    assert_files_eq "DLQ values (multiset) vs the malformed records" "$WORK/dlq.expected" "$WORK/dlq.actual"
    read_topic "$prefix-dlq" '%s\t%h\n' >"$WORK/dlq.with_headers"
    awk -F'\t' 'NR == FNR { want[$1] = $2; next }
        { if (!($1 in want) || index($2, "tally.error=" ) == 0 || index($2, want[$1]) == 0) {
              print "DLQ record " $1 " has headers [" $2 "], expected a tally.error with [" want[$1] "]" > "/dev/stderr"; bad++ } }
        END { exit bad > 0 }' "$reasons" "$WORK/dlq.with_headers" ||
        fail "a dead letter does not carry the expected reason"
    ok
}
