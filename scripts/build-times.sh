#!/usr/bin/env bash
# Clean release builds of the control plane and of the agent, side by side
# on this machine (started together, so both see the same load; each into
# an empty target directory; the crates.io sources are fetched first, so
# only compiling is timed). Prints both times, the ratio, and checks that
# the control plane's build compiled no librdkafka. Side by side favours
# neither: the agent's build gets the whole machine once the control
# plane's has finished, which if anything shortens the agent's time.
# docs/PERFORMANCE.md "Build" has the results.
#
#   scripts/build-times.sh [PROFILE]      PROFILE: release (default) or dev
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${1:-release}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo fetch --locked >/dev/null 2>&1

build() { # name package
  local start end log="$work/$1.log"
  start=$(date +%s.%N)
  CARGO_TARGET_DIR="$work/$1" CARGO_INCREMENTAL=0 \
    cargo build --locked --profile "$profile" -p "$2" >"$log" 2>&1 || {
    tail -20 "$log" >&2
    echo "error: the build of $2 failed (log above)" >&2
    exit 1
  }
  end=$(date +%s.%N)
  echo "$end - $start" | bc
}

build control-plane connectivity-control-plane >"$work/control-plane.secs" &
cp_pid=$!
build agent connectivity-agent >"$work/agent.secs" &
agent_pid=$!
wait "$cp_pid"
wait "$agent_pid"
cp_secs=$(cat "$work/control-plane.secs")
agent_secs=$(cat "$work/agent.secs")
if grep -q "Compiling rdkafka" "$work/control-plane.log"; then
  echo "error: building connectivity-control-plane compiled rdkafka" >&2
  exit 1
fi
printf 'cores %s, profile %s\n' "$(nproc)" "$profile"
printf 'connectivity-control-plane  %7.1f s  (%s crates compiled, no rdkafka)\n' \
  "$cp_secs" "$(grep -c '^ *Compiling' "$work/control-plane.log")"
printf 'connectivity-agent          %7.1f s  (%s crates compiled)\n' \
  "$agent_secs" "$(grep -c '^ *Compiling' "$work/agent.log")"
printf 'control plane / agent       %7.2f\n' "$(echo "$cp_secs / $agent_secs" | bc -l)"
