#!/usr/bin/env bash
# The chaos suite (issue 18, docs/RELIABILITY.md): numbered records through
# the real system while agents, control planes, links, the broker and sinks
# fail; one summary table at the end, exit 1 if any invariant broke.
#
#   scripts/chaos.sh                          short form of every scenario (as in CI)
#   scripts/chaos.sh --minutes 30             long soak: the scenarios in a seeded
#                                             mixed order, 45 s faults, for 30 minutes
#   scripts/chaos.sh --seed 7 agent-sigkill   replay one scenario with seed 7
#
# Other arguments: --window S (seconds per fault), --rate R (records/s).
# Uses the shared test broker (scripts/kafka-broker.sh, or $KAFKA_TEST_ENV);
# broker scenarios start a broker of their own in target/kafka-chaos. The
# output is also kept in target/chaos/chaos-<time>.log. Needs root for the
# JSONL scenarios (they mount a small tmpfs).
set -euo pipefail
cd "$(dirname "$0")/.."
TOXIPROXY_SERVER=$(scripts/toxiproxy.sh)
export TOXIPROXY_SERVER
if [[ -z "${KAFKA_TEST_ENV:-}" ]]; then
    KAFKA_TEST_ENV=$(scripts/kafka-broker.sh start)
    export KAFKA_TEST_ENV
fi
cargo build --workspace --bins
cargo test --no-run --test chaos
mkdir -p target/chaos
log="target/chaos/chaos-$(date +%Y%m%d-%H%M%S).log"
echo "chaos.sh: output also in $log" >&2
cargo test --test chaos -- "$@" 2>&1 | tee "$log"
exit "${PIPESTATUS[0]}"
