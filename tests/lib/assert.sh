# tests/lib/assert.sh - assertions, temp dirs and cleanup for every bash test
# (source it, do not run it).
# shellcheck shell=bash
#
# Environment (set by tests/CMakeLists.txt):
#   TALLY             path to the tally binary (required)
#   TALLY_SOURCE_DIR  repository root (optional)
#   TALLY_KEEP_WORK   if set, keep the temp dir for inspection
#
# Provides: $WORK (a temp dir removed on exit), fail, ok, assert_eq,
# assert_contains, assert_not_contains, assert_files_eq, run (captures status,
# stdout and stderr of a command), tally (the binary under a watchdog),
# summary_field, sq (sqlite3 on a file), jsonl_load, bg_track, finish.

set -euo pipefail
export LC_ALL=C

: "${TALLY:?set TALLY to the path of the tally binary}"
[[ -x "$TALLY" ]] || { echo "FAIL: TALLY=$TALLY is not executable" >&2; exit 1; }
command -v sqlite3 >/dev/null || { echo "FAIL: the sqlite3 command-line shell is required" >&2; exit 1; }

TEST_NAME=$(basename "$0" .sh)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tally-${TEST_NAME}.XXXXXX")
CHECKS=0
BG_PIDS=()

cleanup() {
    local pid
    for pid in "${BG_PIDS[@]+"${BG_PIDS[@]}"}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n "${TALLY_KEEP_WORK:-}" ]]; then
        echo "kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

# Remembers a background process this test started, so cleanup can end it.
bg_track() { BG_PIDS+=("$1"); }

fail() {
    printf 'FAIL [%s]: %s\n' "$TEST_NAME" "$*" >&2
    exit 1
}

ok() { CHECKS=$((CHECKS + 1)); }

# assert_eq WHAT EXPECTED ACTUAL
assert_eq() {
    [[ "$2" == "$3" ]] || fail "$1: expected [$2], got [$3]"
    ok
}

# assert_contains WHAT HAYSTACK NEEDLE (fixed string)
assert_contains() {
    [[ "$2" == *"$3"* ]] || fail "$1: expected to find [$3] in [$2]"
    ok
}

assert_not_contains() {
    [[ "$2" != *"$3"* ]] || fail "$1: did not expect [$3] in [$2]"
    ok
}

# assert_files_eq WHAT EXPECTED_FILE ACTUAL_FILE: shows the first differences.
assert_files_eq() {
    if ! cmp -s "$2" "$3"; then
        printf 'FAIL [%s]: %s differs (expected %s lines, got %s lines); first differences (< expected, > actual):\n' \
            "$TEST_NAME" "$1" "$(wc -l <"$2")" "$(wc -l <"$3")" >&2
        diff "$2" "$3" | head -20 >&2 || true
        exit 1
    fi
    ok
}

# tally ARGS...: the binary under test, with a watchdog so a hang fails the
# test instead of stalling CTest (status 124 = timed out).
tally() { timeout 120 "$TALLY" "$@"; }

# run CMD ARGS...: runs a command without tripping set -e. Sets RC, and OUT and
# ERR to the text of its stdout and stderr (also kept in $WORK/run.out/.err).
run() {
    if "$@" >"$WORK/run.out" 2>"$WORK/run.err"; then RC=0; else RC=$?; fi
    OUT=$(cat "$WORK/run.out")
    ERR=$(cat "$WORK/run.err")
}

# expect_rc WHAT CODE: asserts the status of the last run.
expect_rc() {
    [[ "$RC" == "$2" ]] || fail "$1: expected exit status $2, got $RC; stdout=[${OUT:0:300}] stderr=[${ERR:0:500}]"
    ok
}

# summary_field NAME TEXT: the value of NAME=VALUE in a summary line.
summary_field() {
    printf '%s\n' "$2" | awk -v k="$1" '{ for (i = 1; i <= NF; i++) { n = index($i, "="); if (n && substr($i, 1, n - 1) == k) { print substr($i, n + 1); exit } } }'
}

# sq DB SQL...: sqlite3 in batch mode, stopping at the first error.
sq() {
    local db=$1
    shift
    sqlite3 -batch -bail "$db" "$@"
}

# jsonl_load DB TABLE FILE: loads each line of FILE as one row of TABLE(j), so
# sqlite's json functions can check it (no jq needed). Lines are kept verbatim.
jsonl_load() {
    sqlite3 -batch -bail "$1" "CREATE TABLE IF NOT EXISTS $2(j TEXT)" '.mode ascii' \
        '.separator "\037" "\n"' ".import '$3' $2"
}

# csv_body FILE: a CSV from tally query without its header and CR, sorted.
csv_body() { tr -d '\r' <"$1" | tail -n +2 | sort; }

finish() { echo "ok: $CHECKS checks"; }
