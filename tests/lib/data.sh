# tests/lib/data.sh - test data made with awk, and what tally must make of it,
# computed independently with awk (source it, do not run it; it sources
# assert.sh). Deterministic generators: Park-Miller LCG, exact in doubles;
# mawk prints integers above 2^31 wrongly with %d, so those use %.0f.
# shellcheck shell=bash
#
# Provides:
#   $WINDOW_MS                        the orders pipeline's window (60 s)
#   gen_orders N SEED FIRST TSV       "key|json" order lines on stdout, their
#                                     store/product/event_ms/micros to TSV
#   gen_orders_by_store N SEED FIRST STORES TSV
#                                     like gen_orders, keyed by storeId
#   orders_awk N SEED FIRST STORES TSV KEY
#                                     the generator behind both
#   gen_malformed N TAG               "key|value" lines tally must reject
#   mix FILE... > OUT                 the lines of all FILEs, shuffled
#   expected_windows TSV [WINDOW_MS]  expected order_windows rows
#   total_count FILE                  the sum of the count column of rows
#   gen_readings N SEED               "VIN|json" telemetry readings
#   expected_latest READINGS          the latest record per VIN
#   unpack_records                    packed output messages as records
#   without_produced_at FILE          records without their produced_at
#   hostile_sql                       sets HOSTILE_SQL: statements a read-only
#                                     query must refuse, each alone

[[ -z "${TALLY_LIB_DATA:-}" ]] || return 0
TALLY_LIB_DATA=1

# shellcheck source=assert.sh
source "$(dirname "${BASH_SOURCE[0]}")/assert.sh"

command -v shuf >/dev/null || { echo "FAIL: shuf is required" >&2; exit 1; }
WINDOW_MS=60000

# ------------------------------------------------------------- orders ---

# gen_orders N SEED FIRST_ID TSV > "key|json" lines; appends to TSV, per
# order: store, product, event ms, price micros * qty. 4 stores x 5 products,
# event times over 4 minutes (5 windows of 60 s, not aligned), out of order.
# Prices come as JSON numbers with 2 decimals, decimal strings, integers and
# numbers with 3 decimals. Deterministic (Park-Miller LCG, exact in doubles);
# mawk prints integers above 2^31 wrongly with %d, so those use %.0f.
gen_orders() { orders_awk "$1" "$2" "$3" 4 "$4" order; }

# orders_awk N SEED FIRST STORES TSV KEY: gen_orders' generator over STORES
# stores, each line keyed by the order id (KEY=order) or its storeId
# (KEY=store).
orders_awk() {
    awk -v n="$1" -v seed="$2" -v first="$3" -v stores="$4" -v tsv="$5" -v key_by="$6" '
    function rnd(m) { seed = (seed * 16807) % 2147483647; return seed % m }
    BEGIN {
        base = 1700000000000 + 12345
        for (i = 0; i < n; i++) {
            id = first + i
            s = rnd(stores); p = rnd(5)
            qty = (rnd(50) == 0) ? 1000 : 1 + rnd(20)
            ts = base + rnd(240000)
            kind = rnd(8); cents = rnd(100000)
            if (kind <= 3) {
                micros = cents * 10000; price = sprintf("%d.%02d", int(cents / 100), cents % 100)
            } else if (kind <= 5) {
                micros = cents * 10000; price = sprintf("\"%d.%02d\"", int(cents / 100), cents % 100)
            } else if (kind == 6) {
                micros = int(cents / 100) * 1000000; price = sprintf("%d", int(cents / 100))
            } else {
                mills = rnd(1000000); micros = mills * 1000; price = sprintf("%d.%03d", int(mills / 1000), mills % 1000)
            }
            key = key_by == "store" ? "s" s : "o" id
            printf "%s|{\"orderId\":\"o%d\",\"productId\":\"p%d\",\"storeId\":\"s%d\",\"price\":%s,\"qty\":%d,\"ts\":%.0f}\n", key, id, p, s, price, qty, ts
            printf "s%d\tp%d\t%.0f\t%.0f\n", s, p, ts, micros * qty >> tsv
        }
    }'
}

# gen_malformed N TAG > "key|value" lines that tally must send to the DLQ,
# each one different (TAG and a counter make it unique). Values hold no '|'.
gen_malformed() {
    awk -v n="$1" -v tag="$2" '
    BEGIN {
        for (i = 0; i < n; i++) {
            id = tag "-" i; k = i % 10
            if (k == 0) v = "not json " id
            else if (k == 1) v = "{\"orderId\":\"" id "\",\"productId\":\"p1\",\"storeId\":\"s1\",\"price\":\"abc\",\"qty\":1,\"ts\":1700000000000}"
            else if (k == 2) v = "{\"orderId\":\"" id "\",\"productId\":\"p1\",\"storeId\":\"s1\",\"price\":1.5,\"qty\":0,\"ts\":1700000000000}"
            else if (k == 3) v = "{\"orderId\":\"" id "\",\"productId\":\"p1\",\"storeId\":\"s1\",\"price\":1.5,\"qty\":1001,\"ts\":1700000000000}"
            else if (k == 4) v = "{\"orderId\":\"" id "\",\"productId\":\"p1\",\"storeId\":\"s1\",\"price\":-1.5,\"qty\":1,\"ts\":1700000000000}"
            else if (k == 5) v = "{\"orderId\":\"" id "\",\"productId\":\"p1\",\"price\":1.5,\"qty\":1,\"ts\":1700000000000}"
            else if (k == 6) v = "{\"orderId\":\"" id "\",\"productId\":\"p1\",\"storeId\":\"s1\",\"price\":1.5,\"qty\":1,\"ts\":1700000000000,\"validated\":false}"
            else if (k == 7) v = "{\"orderId\":\"" id "\",\"productId\":\"p1\",\"storeId\":\"s1\",\"price\":1.5,"
            else if (k == 8) v = "[\"" id "\",1,2]"
            else v = "{\"orderId\":\"" id "\",\"productId\":\"p1\",\"storeId\":\"s1\",\"price\":1.5,\"qty\":1}"
            print "bad-" id "|" v
        }
    }'
}

# gen_orders_by_store N SEED FIRST_ID STORES TSV > "storeId|json" lines; the
# orders of gen_orders (same fields, prices, event times; TSV in the same
# form) over STORES stores, keyed by storeId: every window of a store is then
# fed by one input partition, as scale-out requires.
gen_orders_by_store() { orders_awk "$1" "$2" "$3" "$4" "$5" store; }

# mix FILE... : all their lines in a random order.
mix() { cat "$@" | shuf; }

# expected_windows TSV [WINDOW_MS]: "store product window_start sum count"
# (tab separated, sorted), the sum formatted like the order_windows view: at
# least two decimals, no trailing zeros beyond them.
expected_windows() {
    awk -F'\t' -v w="${2:-$WINDOW_MS}" '
    function fmt(m,   whole, frac) {
        whole = sprintf("%.0f", (m - m % 1000000) / 1000000)
        frac = sprintf("%06d", m % 1000000)
        while (length(frac) > 2 && substr(frac, length(frac)) == "0") frac = substr(frac, 1, length(frac) - 1)
        return whole "." frac
    }
    {
        k = $1 "\t" $2 "\t" sprintf("%.0f", $3 - ($3 % w))
        sum[k] += $4; cnt[k]++
    }
    END { for (k in sum) printf "%s\t%s\t%d\n", k, fmt(sum[k]), cnt[k] }' "$1" | sort
}

# total_count FILE: the sum of the count column of window rows.
total_count() { awk -F'\t' '{ n += $5 } END { printf "%.0f\n", n }' "$1"; }

# ---------------------------------------------------------- telemetry ---

# gen_readings N SEED > "VIN|json" lines: N telemetry readings for 25 vehicles
# x 6 sensors; received_at is a permutation of 1..N (no ties) plus a base, so
# arrival order says nothing about recency; one or two sensors per reading.
gen_readings() {
    awk -v n="$1" -v seed="$2" 'BEGIN {
        srand(seed)
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
    }'
}

# expected_latest READINGS.kv > "VIN<TAB>record" lines, sorted: per sensor
# the value with the newest received_at, sensors in name order, received_at
# and produced_at the newest of the winning readings.
expected_latest() {
    sed 's/^[^|]*|//' "$1" | awk '
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
    END { flush() }'
}

# unpack_records: "key<TAB>value" lines in, one "VIN<TAB>record" line per
# record out: a packed message (--batch-size > 1, a JSON array of records)
# becomes its records, in order, each keyed by its own data.id.
unpack_records() {
    awk -F'\t' '
        substr($2, 1, 1) != "[" { print; next }
        {
            v = substr($2, 2, length($2) - 2)
            gsub(/\},\{"data":/, "}\001{\"data\":", v)
            n = split(v, recs, "\001")
            for (i = 1; i <= n; i++) {
                if (!match(recs[i], /^\{"data":\{"id":"[^"]*"/)) { print "not a record: " recs[i] > "/dev/stderr"; exit 1 }
                print substr(recs[i], 16, RLENGTH - 16) "\t" recs[i]
            }
        }'
}

# without_produced_at FILE: the records of FILE with their produced_at removed.
without_produced_at() { sed -E 's/,"produced_at":[0-9]+\}$/}/' "$1"; }

# ------------------------------------------------------------- queries ---

# hostile_sql: sets HOSTILE_SQL to statements a read-only query must refuse,
# each one alone: writes, schema changes, ATTACH, writing PRAGMAs, extensions,
# transactions and maintenance.
hostile_sql() {
    HOSTILE_SQL=(
        "DELETE FROM changelog"
        "DELETE FROM order_window_state WHERE 1"
        "UPDATE order_window_state SET count = 0"
        "INSERT INTO meta (key, value) VALUES ('x', 1)"
        "REPLACE INTO meta (key, value) VALUES ('pipeline.orders.window_ms', '1')"
        "DROP TABLE changelog"
        "DROP VIEW order_windows"
        "CREATE TABLE evil (a)"
        "CREATE TEMP TABLE evil (a)"
        "CREATE INDEX evil ON changelog (key)"
        "ALTER TABLE meta ADD COLUMN evil"
        "ATTACH DATABASE '$WORK/evil.db' AS evil"
        "DETACH DATABASE main"
        "PRAGMA writable_schema = 1"
        "PRAGMA journal_mode = DELETE"
        "PRAGMA user_version = 42"
        "PRAGMA query_only = 0"
        "PRAGMA wal_checkpoint(TRUNCATE)"
        "SELECT load_extension('x')"
        "SELECT load_extension('$WORK/evil.so')"
        "BEGIN"
        "BEGIN IMMEDIATE"
        "COMMIT"
        "SAVEPOINT s"
        "VACUUM"
        "VACUUM INTO '$WORK/evil.db'"
        "REINDEX"
        "ANALYZE"
        "WITH x AS (SELECT 1) DELETE FROM changelog"
        "WITH x AS (SELECT 1) INSERT INTO meta SELECT 'y', 2 FROM x"
    )
}
