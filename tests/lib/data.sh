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
#   $PAGEVIEWS_SQL, $SENSOR_MAX_SQL   the example pipeline files
#   gen_pageviews N SEED TSV          "page|json" page views (pageviews.sql);
#                                     page and event ms to TSV
#   gen_bad_pageviews N TAG REASONS   "key|value" lines it must reject; each
#                                     value and its reason to REASONS
#   expected_page_views TSV [WINDOW_MS]
#                                     "page window_start views" rows
#   gen_sensor_readings N SEED TSV    "sensor|json" readings (sensor_max.sql);
#                                     sensor, event ms, micros to TSV
#   gen_bad_readings N TAG REASONS    "key|value" readings it must reject
#   expected_sensor_max TSV           "sensor hour_start max_micros readings"
#   state_records NKEYS COLUMN:TYPE...
#                                     rows (stdin) as "key<TAB>json" records,
#                                     as a pipeline file's default @emit
#                                     writes them
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

# ------------------------------------------------ pipeline files ---

PAGEVIEWS_SQL=$TALLY_SOURCE_DIR/examples/pipelines/pageviews.sql
SENSOR_MAX_SQL=$TALLY_SOURCE_DIR/examples/pipelines/sensor_max.sql

# gen_pageviews N SEED TSV > "page|json" lines, keyed by page: N views of 40
# pages (one with a non-ASCII name) by users given as strings or integers,
# event times over 5 minutes (6 windows of 60 s, not aligned), out of order;
# some events carry a field the pipeline ignores. Appends "page<TAB>event_ms"
# per view to TSV.
gen_pageviews() {
    awk -v n="$1" -v seed="$2" -v tsv="$3" '
    function rnd(m) { seed = (seed * 16807) % 2147483647; return seed % m }
    BEGIN {
        split("/ /home /docs/install /pricing /blog/2024/ten-tips /caf\303\251 /about-us /search", named, " ")
        base = 1700000000000 + 23456
        for (i = 0; i < n; i++) {
            k = rnd(40)
            page = (k < 8) ? named[k + 1] : sprintf("/p/%d", k)
            ts = base + rnd(300000)
            user = rnd(2) ? sprintf("\"u%d\"", rnd(500)) : sprintf("%d", rnd(500))
            extra = (rnd(5) == 0) ? sprintf(",\"ref\":{\"from\":\"/p/%d\"}", rnd(40)) : ""
            if (rnd(3) == 0)
                printf "%s|{\"ts\":%.0f,\"user\":%s,\"page\":\"%s\"%s}\n", page, ts, user, page, extra
            else
                printf "%s|{\"page\":\"%s\",\"user\":%s,\"ts\":%.0f%s}\n", page, page, user, ts, extra
            printf "%s\t%.0f\n", page, ts >> tsv
        }
    }'
}

# gen_bad_pageviews N TAG REASONS > "key|value" lines pageviews.sql must
# reject, each one different (TAG and a counter); appends "value<TAB>the
# start of the reason" to REASONS.
gen_bad_pageviews() {
    awk -v n="$1" -v tag="$2" -v reasons="$3" '
    BEGIN {
        for (i = 0; i < n; i++) {
            id = tag "-" i; k = i % 9; ts = 1700000000000 + i
            if (k == 0) { v = "not json " id; r = "invalid JSON" }
            else if (k == 1) { v = sprintf("{\"page\":\"/home\",\"ts\":%.0f,\"id\":\"%s\"}", ts, id); r = "missing field \"user\"" }
            else if (k == 2) { v = "{\"page\":\"/home\",\"user\":\"" id "\",\"ts\":\"yesterday\"}"; r = "field \"ts\" must be an integer" }
            else if (k == 3) { v = sprintf("{\"page\":17,\"user\":\"%s\",\"ts\":%.0f}", id, ts); r = "field \"page\" must be a string" }
            else if (k == 4) { v = sprintf("{\"page\":null,\"user\":\"%s\",\"ts\":%.0f}", id, ts); r = "missing field \"page\"" }
            else if (k == 5) { v = "{\"page\":\"/home\",\"user\":\"" id "\","; r = "invalid JSON" }
            else if (k == 6) { v = "[\"" id "\",1]"; r = "event must be a JSON object" }
            else if (k == 7) { v = "{\"page\":\"/home\",\"user\":\"" id "\",\"ts\":-5}"; r = "field \"ts\" is -5, not epoch milliseconds" }
            else { v = sprintf("{\"page\":\"/home\",\"user\":true,\"ts\":%.0f,\"id\":\"%s\"}", ts, id); r = "field \"user\" must be a string or integer" }
            print "bad-" id "|" v
            print v "\t" r >> reasons
        }
    }'
}

# expected_page_views TSV [WINDOW_MS]: the page_views rows the views of TSV
# make, "page<TAB>window_start_ms<TAB>views", sorted.
expected_page_views() {
    awk -F'\t' -v w="${2:-$WINDOW_MS}" '
        { k = $1 "\t" sprintf("%.0f", $2 - ($2 % w)); views[k]++ }
        END { for (k in views) printf "%s\t%d\n", k, views[k] }' "$1" | sort
}

# gen_sensor_readings N SEED TSV > "sensor|json" lines, keyed by sensor: N
# temperatures of 24 sensors (four of them named by a number, sent as a JSON
# integer or a string) over 3.4 hours (4 or 5 hours each, not aligned).
# Degrees from -40 to 80 with 0 to 6 decimals, as JSON numbers or decimal
# strings, some with trailing zeros, some numbers with an exponent; now and then exactly -273.15
# or 1000, the limits @check still lets through. Appends
# "sensor<TAB>event_ms<TAB>micros" per reading to TSV.
gen_sensor_readings() {
    awk -v n="$1" -v seed="$2" -v tsv="$3" '
    function rnd(m) { seed = (seed * 16807) % 2147483647; return seed % m }
    BEGIN {
        base = 1700000000000 + 777
        for (i = 0; i < n; i++) {
            k = rnd(24)
            if (k < 20) { sensor = sprintf("s-%02d", k); sv = "\"" sensor "\"" }
            else { sensor = sprintf("%d", 80 + k); sv = rnd(2) ? sensor : "\"" sensor "\"" }
            ts = base + rnd(12345678)
            edge = rnd(400)
            if (edge == 0) { micros = -273150000; t = rnd(2) ? "-273.15" : "\"-273.150000\"" }
            else if (edge == 1) { micros = 1000000000; t = rnd(2) ? "1000" : "\"1000.000000\"" }
            else {
                d = rnd(7); scale = 1; for (j = 0; j < d; j++) scale *= 10
                units = rnd(120 * scale) - 40 * scale
                micros = units * 1000000 / scale
                if (micros == 0) micros = 0
                a = units < 0 ? -units : units
                t = sprintf("%s%d", units < 0 ? "-" : "", int(a / scale))
                if (d > 0) t = t "." sprintf("%0" d "d", a % scale)
                form = rnd(10)
                if (form == 0 && d > 0) t = sprintf("%de-%d", units, d)
                else {
                    if (form == 1 && d < 6) { if (d == 0) t = t "."; while (d++ < 6) t = t "0" }
                    if (rnd(4) == 0) t = "\"" t "\""
                }
            }
            printf "%s|{\"sensor\":%s,\"celsius\":%s,\"ts\":%.0f}\n", sensor, sv, t, ts
            printf "%s\t%.0f\t%.0f\n", sensor, ts, micros >> tsv
        }
    }'
}

# gen_bad_readings N TAG REASONS > "key|value" readings sensor_max.sql must
# reject (@check: below absolute zero or above 1000; more than 6 decimals;
# malformed), each one different; appends "value<TAB>the start of the
# reason" to REASONS.
gen_bad_readings() {
    awk -v n="$1" -v tag="$2" -v reasons="$3" '
    BEGIN {
        for (i = 0; i < n; i++) {
            id = tag "-" i; k = i % 8; ts = 1700000000000 + i; s = "\"sensor\":\"" id "\""
            if (k == 0) { v = sprintf("{%s,\"celsius\":-273.150001,\"ts\":%.0f}", s, ts); r = "celsius is below absolute zero" }
            else if (k == 1) { v = sprintf("{%s,\"celsius\":21.1234567,\"ts\":%.0f}", s, ts); r = "field \"celsius\": more than 6 decimal places" }
            else if (k == 2) { v = sprintf("{%s,\"celsius\":\"-300.5\",\"ts\":%.0f}", s, ts); r = "celsius is below absolute zero" }
            else if (k == 3) { v = sprintf("{%s,\"celsius\":\"-0.0000001\",\"ts\":%.0f}", s, ts); r = "field \"celsius\": more than 6 decimal places" }
            else if (k == 4) { v = sprintf("{%s,\"celsius\":1000.000001,\"ts\":%.0f}", s, ts); r = "celsius is above 1000" }
            else if (k == 5) { v = sprintf("{%s,\"celsius\":\"warm\",\"ts\":%.0f}", s, ts); r = "field \"celsius\": not a decimal number" }
            else if (k == 6) { v = "{" s ",\"celsius\":21.5}"; r = "missing field \"ts\"" }
            else { v = "{" s ",\"celsius\":"; r = "invalid JSON" }
            print "bad-" id "|" v
            print v "\t" r >> reasons
        }
    }'
}

# expected_sensor_max TSV: the sensor_max rows the readings of TSV make,
# "sensor<TAB>hour_start_ms<TAB>max_micros<TAB>readings", sorted.
expected_sensor_max() {
    awk -F'\t' '
        { k = $1 "\t" sprintf("%.0f", $2 - ($2 % 3600000))
          if (!(k in max) || $3 + 0 > max[k] + 0) max[k] = $3
          n[k]++ }
        END { for (k in max) printf "%s\t%.0f\t%d\n", k, max[k], n[k] }' "$1" | sort
}

# state_records NKEYS COLUMN:TYPE... < rows > "key<TAB>json" lines, sorted:
# the output record of each tab separated row (the columns of the state
# table in order, TYPE text or int), keyed by its first NKEYS columns joined
# with '#', its value the row as a JSON object in column order.
state_records() {
    local nkeys=$1
    shift
    awk -F'\t' -v nkeys="$nkeys" -v cols="$*" '
    BEGIN { ncol = split(cols, c, " "); for (i = 1; i <= ncol; i++) { split(c[i], nt, ":"); name[i] = nt[1]; type[i] = nt[2] } }
    NF != ncol { print "state_records: " NF " columns, expected " ncol ": " $0 > "/dev/stderr"; exit 1 }
    {
        key = ""; v = ""
        for (i = 1; i <= ncol; i++) {
            if (i <= nkeys) key = key (i > 1 ? "#" : "") $i
            x = $i
            if (type[i] == "text") { gsub(/\\/, "\\\\", x); gsub(/"/, "\\\"", x); x = "\"" x "\"" }
            v = v (i > 1 ? "," : "") "\"" name[i] "\":" x
        }
        print key "\t{" v "}"
    }' | sort
}

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
