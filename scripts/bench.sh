#!/usr/bin/env bash
# The relay benchmark (docs/PERFORMANCE.md): a real Kafka broker, the real
# agent binary, the reference control plane with a discard and a JSONL sink;
# throughput against a bare rdkafka consumer and kcat, latency, memory, CPU,
# and the relay over a 50 ms round trip.
#
#   scripts/bench.sh [--short] [ARGS...]
#
#   --short   seconds, not minutes (CI): proves the harness works, asserts
#             nothing about speed. Built with the dev profile and run against
#             the test broker (target/kafka-test), which scripts/test.sh
#             has already started.
#   --publish the publish benchmark only (see its part below).
#   (full)    about 19 minutes plus builds; release build, its own broker in
#             target/bench/kafka (stopped again at the end), so that other
#             tests do not share the broker while it is measured.
#
# Other ARGS go to the benchmark (`--only latency,idle`, `--only sinks`
# (the relay into each sink, MirrorMaker 2 beside it), `--sizes 1024`,
# `--partitions 1`, `--scale 0.2`, `--soak-secs 60`, `--help`).
# Results: target/bench/results/ (report.md, results.json, *.svg, logs);
# the short form writes to target/bench/short/.
# Environment: BENCH_KAFKA_DIR (broker directory), BENCH_PROFILE (cargo
# profile), BENCH_OUT (results directory). KAFKA_TEST_ENV (the tests'
# variable, tests/common/kafka.rs): the short form uses the broker whose
# broker.env it names and never starts or stops it; BENCH_KAFKA_DIR wins.
set -euo pipefail
cd "$(dirname "$0")/.."

# --- publish part (issue 19; docs/CONTROL_PLANE.md, "Streams") ---------------
# scripts/bench.sh --publish: a bare rdkafka producer against publishing the
# same 1 KiB records through the console API and one agent, and p50/p99 at
# 1,000 records/s, on the broker KAFKA_TEST_ENV names (release build;
# BENCH_PROFILE=dev for a quick look; BENCH_ASSERT=1 fails below the targets).
if [ "${1:-}" = --publish ]; then
  : "${KAFKA_TEST_ENV:?set KAFKA_TEST_ENV to the broker.env of a running broker (scripts/kafka-broker.sh start DIR)}"
  prof=${BENCH_PROFILE:-release}
  exec cargo test --profile "$prof" --test streams_e2e measure_publish -- --ignored --nocapture
fi
# --- end of the publish part ---------------------------------------------------

short=0
for a in "$@"; do
  [ "$a" = --short ] && short=1
done

if [ "$short" = 1 ]; then
  export BENCH_OUT=${BENCH_OUT:-target/bench/short}
  profile=${BENCH_PROFILE:-dev}
  kafka_dir=${BENCH_KAFKA_DIR:-target/kafka-test}
else
  profile=${BENCH_PROFILE:-release}
  kafka_dir=${BENCH_KAFKA_DIR:-target/bench/kafka}
fi
case "$profile" in
  dev) bin_dir=target/debug ;;
  *) bin_dir=target/$profile ;;
esac

if ! command -v kcat >/dev/null; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: the benchmark needs kcat; install it (sudo apt-get install kcat) and run again" >&2
    exit 1
  fi
  echo "installing kcat"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kcat >/dev/null
fi
command -v ss >/dev/null || { echo "error: the benchmark needs ss (apt-get install iproute2)" >&2; exit 1; }

# The broker: one someone else manages (KAFKA_TEST_ENV, short form only),
# else reuse a running one, else start it and stop it at the end.
if [ "$short" = 1 ] && [ -n "${KAFKA_TEST_ENV:-}" ] && [ -z "${BENCH_KAFKA_DIR:-}" ]; then
  if [ ! -f "$KAFKA_TEST_ENV" ]; then
    echo "error: KAFKA_TEST_ENV=$KAFKA_TEST_ENV does not exist; start that broker first (scripts/kafka-broker.sh start DIR) or unset KAFKA_TEST_ENV" >&2
    exit 1
  fi
  broker_env=$KAFKA_TEST_ENV
else
  started_broker=0
  if ! scripts/kafka-broker.sh status "$kafka_dir" >/dev/null 2>&1; then
    started_broker=1
  fi
  broker_env=$(scripts/kafka-broker.sh start "$kafka_dir")
  stop_broker() { scripts/kafka-broker.sh stop "$kafka_dir" >/dev/null 2>&1 || true; }
  if [ "$started_broker" = 1 ] && [ "${KEEP_BROKER:-0}" != 1 ]; then trap stop_broker EXIT; fi
fi

# The MirrorMaker 2 peer's jars (the sinks part of a full run; the short
# form skips the peer): fetched once from Maven Central like the broker's,
# again only when the pom changes. Without Maven the peer is skipped.
mirror_libs=target/mirror-maker-libs
mirror_pom=scripts/kafka/mirror-maker-pom.xml
if [ "$short" = 0 ] && command -v mvn >/dev/null; then
  want=$(sha256sum "$mirror_pom" | cut -d' ' -f1)
  if [ "$(cat "$mirror_libs/.pom-sha256" 2>/dev/null)" != "$want" ]; then
    echo "fetching MirrorMaker 2 jars from Maven Central into $mirror_libs"
    rm -rf "$mirror_libs.tmp"
    if mvn -B -q -f "$mirror_pom" dependency:copy-dependencies \
        -DoutputDirectory="$PWD/$mirror_libs.tmp" -DincludeScope=runtime >"$mirror_libs.mvn.log" 2>&1; then
      rm -rf "$mirror_libs" && mv "$mirror_libs.tmp" "$mirror_libs" && echo "$want" >"$mirror_libs/.pom-sha256"
    else
      echo "warning: mvn could not fetch MirrorMaker 2 ($mirror_libs.mvn.log); the peer is skipped" >&2
    fi
  fi
fi

# One build, the bench's: for a bench target cargo builds the package's
# binaries too, with the bench's features (dev-dependencies included), and
# puts the agent at $bin_dir/connectivity-agent. A separate `cargo build
# --bin` built a second agent with other features (tokio without its
# test-util, so tokio and every crate above it again: 2 min 50 s of a dev
# build on 2 cores), which the bench's build then replaced before it ran.
cargo bench --profile "$profile" --bench relay --no-run
# The control plane binary, which the sinks part also runs as its own
# process; built alone it only rebuilds its own crate.
cargo build --profile "$profile" -p connectivity-control-plane --bin control-plane
BENCH_BROKER_ENV=$(realpath "$broker_env") \
BENCH_AGENT_BIN=$(realpath "$bin_dir/connectivity-agent") \
BENCH_CP_BIN=$(realpath "$bin_dir/control-plane") \
BENCH_PROFILE=$profile \
BENCH_COMMAND="scripts/bench.sh $*" \
  cargo bench --profile "$profile" --bench relay -- "$@"
