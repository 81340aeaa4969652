#!/bin/bash
# Creates the Custos Kafka topics listed in a topics file, idempotently: the one-shot `kafka-init`
# service of compose.yaml runs it in the apache/kafka image once the broker is healthy.
#
# The topics file is config/topics.conf of the repository (mounted read-only), the same file
# `scripts/stack up` reads: one `<name> <partitions> [<setting>=<value> ...]` a line, '#' starts a
# comment; settings apply when a topic is created.
# A missing topic is created; a topic with fewer partitions than listed gets more; a topic with
# more only draws a warning (Kafka cannot remove partitions). Exits non-zero when the broker does
# not end up with every listed topic at (at least) its listed partition count.
#
# Environment: KAFKA_BOOTSTRAP [kafka:9092], TOPICS_CONF [/custos/topics.conf],
#              TOPIC_REPLICATION_FACTOR [1], KAFKA_HOME [/opt/kafka]
set -Eeuo pipefail

BOOTSTRAP=${KAFKA_BOOTSTRAP:-kafka:9092}
CONF=${TOPICS_CONF:-/custos/topics.conf}
RF=${TOPIC_REPLICATION_FACTOR:-1}
TOPICS_CMD=${KAFKA_HOME:-/opt/kafka}/bin/kafka-topics.sh

say() { printf 'kafka-init: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

[[ -r $CONF ]] || die "cannot read $CONF"
[[ -x $TOPICS_CMD ]] || die "no $TOPICS_CMD"

topics() { "$TOPICS_CMD" --bootstrap-server "$BOOTSTRAP" "$@"; }

# partition_count DESCRIBE NAME: the PartitionCount of topic NAME in `--describe` output.
partition_count() {
  printf '%s\n' "$1" | awk -v t="$2" '
    $1 == "Topic:" && $2 == t {
      for (i = 3; i < NF; i++) if ($i == "PartitionCount:") { print $(i + 1); exit }
    }'
}

describe_all() {
  local out tries=0
  until out=$(topics --describe --exclude-internal 2>&1); do
    tries=$((tries + 1))
    ((tries < 10)) || { printf '%s\n' "$out" | tail -n 20 >&2; die "cannot list topics on $BOOTSTRAP"; }
    say "broker not answering yet ($tries); retrying in 3s"
    sleep 3
  done
  printf '%s\n' "$out"
}

declare -A want=() settings=()
order=()
while read -r name parts rest || [[ -n ${name:-} ]]; do
  [[ -z ${name:-} || $name == \#* ]] && continue
  [[ $name =~ ^[A-Za-z0-9._-]+$ ]] || die "$CONF: bad topic name '$name'"
  [[ $parts =~ ^[0-9]+$ ]] && ((parts >= 1)) || die "$CONF: bad partition count for $name: '${parts:-}'"
  [[ -z ${want[$name]:-} ]] || die "$CONF: topic $name listed twice"
  want[$name]=$parts
  settings[$name]=""
  for kv in ${rest%%#*}; do
    [[ $kv =~ ^[a-z.]+=[A-Za-z0-9._-]+$ ]] || die "$CONF: bad topic setting for $name: '$kv'"
    settings[$name]+=" --config $kv"
  done
  order+=("$name")
done <"$CONF"
((${#order[@]} > 0)) || die "$CONF lists no topic"

describe=$(describe_all)
for name in "${order[@]}"; do
  parts=${want[$name]}
  have=$(partition_count "$describe" "$name")
  if [[ -z $have ]]; then
    # shellcheck disable=SC2086 # settings are validated key=value words
    topics --create --if-not-exists --topic "$name" --partitions "$parts" --replication-factor "$RF" ${settings[$name]} >/dev/null \
      || die "creating topic $name failed"
    say "created topic $name ($parts partitions)"
  elif ((have < parts)); then
    topics --alter --topic "$name" --partitions "$parts" >/dev/null || die "adding partitions to $name failed"
    say "topic $name: partitions raised from $have to $parts"
  elif ((have > parts)); then
    say "WARNING: topic $name has $have partitions, $CONF says $parts (partitions cannot be removed)"
  else
    say "topic $name present ($parts partitions)"
  fi
done

# Check the result.
describe=$(describe_all)
for name in "${order[@]}"; do
  have=$(partition_count "$describe" "$name")
  [[ -n $have ]] && ((have >= ${want[$name]})) || die "topic $name: broker reports '${have:-missing}' partitions, want ${want[$name]}"
done
say "all ${#order[@]} topics of $CONF present"
