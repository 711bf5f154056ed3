# tests/lib/assert.sh - assertions, temp dirs and cleanup for every bash test
# (source it, do not run it; kafka.sh, data.sh, tally.sh and enrich.sh
# source it themselves).
# shellcheck shell=bash
#
# Environment (set by tests/CMakeLists.txt):
#   TALLY             path to the tally binary (required)
#   TALLY_SOURCE_DIR  repository root (default: two levels above this file)
#   TALLY_KEEP_WORK   if set, keep the temp dir for inspection
#
# Provides:
#   $WORK, $TEST_NAME, $CHECKS      a temp dir removed on exit, the script's
#                                     name, the checks passed so far
#   CLEANUP_HOOKS                     functions the exit trap also runs
#   alive PID                         the process exists and is no zombie
#   bg_track PID [LOG]                a background process the exit trap kills
#                                     (SIGKILL); its LOG is shown on failure
#   log_track LOG                     a log shown (its tail) if the test fails
#   show_logs                         the tails of the tracked logs
#   cleanup                           the exit trap: ends the processes, runs
#                                     CLEANUP_HOOKS, removes $WORK
#   fail MESSAGE                      FAIL line on stderr, exit 1
#   ok                                one more check passed
#   note MESSAGE                      a progress line on stderr
#   assert_eq WHAT EXPECTED ACTUAL    the two strings are equal
#   assert_contains WHAT TEXT PART    PART (fixed string) is in TEXT
#   assert_not_contains WHAT TEXT PART
#                                     PART is not in TEXT
#   assert_files_eq WHAT EXP ACTUAL   the files are equal (shows the diff)
#   expect_in FILE WHAT TEXT...       FILE contains every TEXT (fixed strings)
#   tally ARGS...                     the binary under a 120 s watchdog
#   run CMD ARGS...                   sets RC, OUT and ERR of the command
#   expect_rc WHAT CODE               the last run exited with CODE
#   summary_field NAME TEXT           the value of NAME=VALUE in TEXT
#   sq DB SQL...                      sqlite3 in batch mode, bail on error
#   jsonl_load DB TABLE FILE          each line of FILE one row TABLE(j)
#   csv_body FILE                     a tally query CSV: no header, no CR, sorted
#   finish [SUMMARY]                  "ok: TEST: N checks; SUMMARY"

[[ -z "${TALLY_LIB_ASSERT:-}" ]] || return 0
TALLY_LIB_ASSERT=1

set -euo pipefail
export LC_ALL=C

: "${TALLY:?set TALLY to the path of the tally binary}"
[[ -x "$TALLY" ]] || { echo "FAIL: TALLY=$TALLY is not executable" >&2; exit 1; }
for _tool in sqlite3 awk timeout; do
    command -v "$_tool" >/dev/null || { echo "FAIL: $_tool is required" >&2; exit 1; }
done
TALLY_SOURCE_DIR=${TALLY_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}

# abort() must not leave core files behind.
ulimit -c 0

TEST_NAME=$(basename "$0" .sh)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tally-${TEST_NAME}.XXXXXX")
CHECKS=0
BG_PIDS=()
LOGS=()
CLEANUP_HOOKS=()

# True while the process exists and is not a zombie.
alive() {
    local state
    state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1) || return 1
    [[ -n "$state" && "$state" != Z ]]
}

# bg_track PID [LOG]: a background process the exit trap ends; LOG, if
# given, is shown when the test fails.
bg_track() {
    BG_PIDS+=("$1")
    [[ -z "${2:-}" ]] || LOGS+=("$2")
}

# log_track LOG: shown (its last lines) when the test fails.
log_track() { LOGS+=("$1"); }

show_logs() {
    local log
    for log in "${LOGS[@]+"${LOGS[@]}"}"; do
        [[ -f "$log" ]] || continue
        printf -- '--- last lines of %s:\n' "$log" >&2
        tail -n 15 "$log" | cut -c1-400 >&2 || true
    done
}

cleanup() {
    local rc=$? pid hook
    for pid in "${BG_PIDS[@]+"${BG_PIDS[@]}"}"; do
        if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
        wait "$pid" 2>/dev/null || true
    done
    if ((rc != 0)); then show_logs; fi
    for hook in "${CLEANUP_HOOKS[@]+"${CLEANUP_HOOKS[@]}"}"; do
        "$hook" || true
    done
    if [[ -n "${TALLY_KEEP_WORK:-}" ]]; then
        echo "kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

fail() {
    printf 'FAIL [%s]: %s\n' "$TEST_NAME" "$*" >&2
    exit 1
}

ok() { CHECKS=$((CHECKS + 1)); }

note() { printf '[%s] %s\n' "$TEST_NAME" "$*" >&2; }

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

# expect_in FILE WHAT TEXT...: FILE contains every TEXT (fixed strings).
expect_in() {
    local file=$1 what=$2 text
    shift 2
    for text in "$@"; do
        grep -qF -- "$text" "$file" || fail "$what: no \"$text\" in: $(grep -v '^ts=' "$file" | head -c 800)"
        ok
    done
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

finish() { echo "ok: $TEST_NAME: $CHECKS checks${1:+; $1}"; }
