#!/usr/bin/env bash
# tests/kafka/test_topics.sh - tally topics create against a real broker.
#
# Creates both pipelines' five topics under a prefix unique to this run, and
# checks with kcat (and, on scripts/kafka's Apache broker, Kafka's own
# TopicCommand) that they exist with the input's partition count and the right
# cleanup.policy; that a second run changes nothing and says "exists"; that a
# topic with the wrong cleanup.policy or partition count is an error naming
# what differs, with nothing created; and that bad flags exit 2.
#
# Environment: TALLY (the binary), KAFKA_BROKERS (default 127.0.0.1:9092).
# Run by hand: TALLY=build/tally bash tests/kafka/test_topics.sh

# shellcheck source=../lib/kafka.sh
source "$(dirname "$0")/../lib/kafka.sh"

RUN_ID="tt$$x$RANDOM"
broker_answers
CLEANUP_HOOKS+=(delete_run_topics)

# partitions_of TOPIC: its partition count per kcat, or "missing".
partitions_of() {
    kcat -b "$KAFKA_BROKERS" -L -m 10 2>/dev/null |
        awk -v t="$1" '$1 == "topic" && $2 == "\"" t "\"" { print $4; found = 1 } END { if (!found) print "missing" }'
}

# policy_of TOPIC: its cleanup.policy per Kafka's TopicCommand.
policy_of() {
    # Configs: a=1,cleanup.policy=compact,delete,b=2 - the policy's own commas
    # are the items without "=" that follow it.
    "$KAFKA_SCRIPT" topics --describe --topic "$1" 2>/dev/null |
        awk -F'Configs: ' 'NF > 1 { n = split($2, item, ","); on = 0; out = ""
            for (i = 1; i <= n; i++) {
                if (item[i] ~ /^cleanup\.policy=/) { on = 1; out = substr(item[i], 16); continue }
                if (on && item[i] !~ /=/) out = out "," item[i]; else on = 0
            }
            print out; exit }'
}

# create_topics ARGS...: tally topics create, its results in RC/OUT/ERR.
create_topics() { run tally topics create --brokers "$KAFKA_BROKERS" "$@"; }

# made WHAT ARGS...: tally topics create ARGS exits 0.
made() {
    local what=$1
    shift
    create_topics "$@"
    expect_rc "$what" 0
}

# refused WHAT ERROR ARGS...: tally topics create ARGS exits 1 with ERROR.
refused() {
    local what=$1 error=$2
    shift 2
    create_topics "$@"
    expect_rc "$what" 1
    assert_contains "$what: the error" "$ERR" "$error"
}

# ------------------------------------------------ both pipelines, twice ---

for pipeline in orders telemetry; do
    prefix="$RUN_ID-$pipeline"
    input="$RUN_ID.$pipeline.in"
    output="$RUN_ID.$pipeline.out"
    input_policy=delete
    [[ $pipeline == telemetry ]] && input_policy=compact
    declare -A policy=(
        ["$input"]=$input_policy ["$output"]=compact ["$prefix-changelog"]=compact
        ["$prefix-snapshots"]=compact ["$prefix-dlq"]=delete)
    topics=("$input" "$output" "$prefix-changelog" "$prefix-snapshots" "$prefix-dlq")

    made "$pipeline: first create" --pipeline "$pipeline" --topic-prefix "$prefix" --input-topic "$input" \
        --output-topic "$output" --partitions 3
    assert_eq "$pipeline: lines printed" 5 "$(grep -c '^topic=' <<<"$OUT")"
    for t in "${topics[@]}"; do
        assert_contains "$pipeline: report for $t" "$OUT" \
            "topic=$t partitions=3 cleanup.policy=${policy[$t]} status=created"
        assert_eq "$pipeline: kcat partitions of $t" 3 "$(partitions_of "$t")"
        if have_topic_command; then
            assert_eq "$pipeline: cleanup.policy of $t on the broker" "${policy[$t]}" "$(policy_of "$t")"
        fi
    done

    # Again, this time with KAFKA_BROKERS instead of --brokers: nothing to do.
    if KAFKA_BROKERS=$KAFKA_BROKERS "$TALLY" topics create --pipeline "$pipeline" --topic-prefix "$prefix" \
        --input-topic "$input" --output-topic "$output" --partitions 3 >"$WORK/again.out" 2>"$WORK/again.err"; then
        RC=0
    else
        RC=$?
    fi
    OUT=$(cat "$WORK/again.out") ERR=$(cat "$WORK/again.err")
    expect_rc "$pipeline: second create" 0
    for t in "${topics[@]}"; do
        assert_contains "$pipeline: second report for $t" "$OUT" \
            "topic=$t partitions=3 cleanup.policy=${policy[$t]} status=exists"
    done
    assert_not_contains "$pipeline: second run created nothing" "$OUT" "status=created"
    unset policy
done

# An existing input keeps its partition count; new internal topics follow it.
made "internal topics next to an existing input" --pipeline orders --topic-prefix "$RUN_ID-follow" \
    --input-topic "$RUN_ID.orders.in" --output-topic "$RUN_ID.follow.out" --partitions 5
assert_contains "existing input reported" "$OUT" "topic=$RUN_ID.orders.in partitions=3 cleanup.policy=delete status=exists"
assert_contains "new changelog follows the input" "$OUT" "topic=$RUN_ID-follow-changelog partitions=3 cleanup.policy=compact status=created"
assert_eq "kcat partitions of the new changelog" 3 "$(partitions_of "$RUN_ID-follow-changelog")"
assert_contains "--partitions ignored for an existing input, with a note" "$ERR" "already has 3 partitions"

# ------------------------------------------------------------ conflicts ---

# A changelog topic with cleanup.policy=delete. Made with Kafka's own tool when
# there is one; otherwise with tally, as another layout's (delete) input.
bad="$RUN_ID-bad"
if have_topic_command; then
    "$KAFKA_SCRIPT" topics --create --topic "$bad-changelog" --partitions 3 \
        --config cleanup.policy=delete >/dev/null 2>&1 || fail "could not create $bad-changelog"
else
    made "setting up $bad-changelog" --pipeline orders --input-topic "$bad-changelog" --topic-prefix "$bad-other" \
        --output-topic "$bad-other.out" --partitions 3
fi
refused "changelog with cleanup.policy=delete (the error names the topic and both policies)" \
    "topic $bad-changelog exists with cleanup.policy=delete, tally needs compact" \
    --pipeline orders --topic-prefix "$bad" --input-topic "$bad.in" --output-topic "$bad.out" --partitions 3
assert_eq "no report lines on a conflict" "" "$OUT"
for t in "$bad.in" "$bad.out" "$bad-snapshots" "$bad-dlq"; do
    assert_eq "nothing created on a conflict: $t" missing "$(partitions_of "$t")"
done

# A snapshots topic (compact, as it should be) with 2 partitions where the input
# will have 3: made as a telemetry input, whose policy is compact.
odd="$RUN_ID-odd"
made "setting up $odd-snapshots" --pipeline telemetry --input-topic "$odd-snapshots" --topic-prefix "$odd-other" \
    --output-topic "$odd-other.out" --partitions 2
refused "snapshots with the wrong partition count (the error names both counts)" \
    "topic $odd-snapshots has 2 partitions, the input $odd.in would be created with 3" \
    --pipeline orders --topic-prefix "$odd" --input-topic "$odd.in" --output-topic "$odd.out" --partitions 3
assert_eq "input not created on a conflict" missing "$(partitions_of "$odd.in")"
# The same against an existing input.
refused "snapshots vs existing input (the error names it)" \
    "topic $odd-snapshots has 2 partitions, the input $RUN_ID.orders.in has 3" \
    --pipeline orders --topic-prefix "$odd" --input-topic "$RUN_ID.orders.in" --output-topic "$odd.out"

# An input with the wrong policy: the telemetry input must be compacted.
refused "input with the wrong policy (the error names the input's policy)" \
    "topic $RUN_ID.orders.in exists with cleanup.policy=delete, tally needs compact" \
    --pipeline telemetry --topic-prefix "$RUN_ID-tw" --input-topic "$RUN_ID.orders.in" --output-topic "$RUN_ID.tw.out"

# ------------------------------------------------------------ bad flags ---

run tally topics --help
expect_rc "topics --help" 0
assert_contains "topics --help prints usage" "$OUT" "usage: tally topics create"
run tally topics create --help
expect_rc "topics create --help" 0
run tally topics
expect_rc "no subcommand" 2
run tally topics delete --pipeline orders
expect_rc "unknown subcommand" 2
run env -u KAFKA_BROKERS "$TALLY" topics create --pipeline orders
expect_rc "no brokers anywhere" 2
assert_contains "says which flag is missing" "$ERR" "--brokers"
create_topics
expect_rc "no pipeline" 2
create_topics --pipeline payments
expect_rc "unknown pipeline" 2
create_topics --pipeline orders --partitions 0
expect_rc "zero partitions" 2
create_topics --pipeline orders --partitions many
expect_rc "partitions not a number" 2
create_topics --pipeline orders --input-topic 'bad name'
expect_rc "topic name with a space" 2
create_topics --pipeline orders --topic-prefix "$(printf 'p%.0s' {1..250})"
expect_rc "topic name too long" 2
create_topics --pipeline orders --input-topic "$RUN_ID.same" --output-topic "$RUN_ID.same"
expect_rc "input and output the same topic" 2
create_topics --pipeline orders --bogus
expect_rc "unknown option" 2
create_topics --pipeline orders --partitions
expect_rc "option without its value" 2
create_topics --pipeline orders extra
expect_rc "stray argument" 2
assert_eq "bad flags created nothing" missing "$(partitions_of "$RUN_ID.same")"

finish
