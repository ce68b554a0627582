#!/usr/bin/env bash
# Clean builds of the control plane and of the agent on this machine, one
# after the other (each alone, into an empty target directory; the
# crates.io sources are fetched first, so only compiling is timed). Prints
# the wall time and the CPU time (user + system, which load from other
# processes changes far less) of each, the ratios, and checks that the
# control plane's build compiled no librdkafka. Cargo's per-crate timing
# reports are kept in target/build-times/. docs/PERFORMANCE.md "Build" has
# the results.
#
#   scripts/build-times.sh [PROFILE]      PROFILE: release (default) or dev
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${1:-release}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
keep=target/build-times
mkdir -p "$keep"
cargo fetch --locked >/dev/null 2>&1
load=$(cut -d' ' -f1-3 /proc/loadavg)

build() { # name package -> "wall cpu" seconds
  local log="$work/$1.log"
  CARGO_TARGET_DIR="$work/$1" CARGO_INCREMENTAL=0 \
    /usr/bin/time -f '%e %U %S' -o "$work/$1.time" \
    cargo build --locked --timings --profile "$profile" -p "$2" >"$log" 2>&1 || {
    tail -20 "$log" >&2
    echo "error: the build of $2 failed (log above)" >&2
    exit 1
  }
  cp "$work/$1/cargo-timings/cargo-timing.html" "$keep/$1-$profile.html"
  awk '{ printf "%.1f %.1f\n", $1, $2 + $3 }' "$work/$1.time"
}

read -r cp_wall cp_cpu < <(build control-plane connectivity-control-plane)
read -r agent_wall agent_cpu < <(build agent connectivity-agent)
if grep -q "Compiling rdkafka" "$work/control-plane.log"; then
  echo "error: building connectivity-control-plane compiled rdkafka" >&2
  exit 1
fi
printf 'cores %s, profile %s, load average at start: %s\n' "$(nproc)" "$profile" "$load"
printf '%-28s %8s %8s  %s\n' build wall cpu crates
printf '%-28s %7.1fs %7.1fs  %s, no rdkafka\n' connectivity-control-plane "$cp_wall" "$cp_cpu" \
  "$(grep -c '^ *Compiling' "$work/control-plane.log")"
printf '%-28s %7.1fs %7.1fs  %s\n' connectivity-agent "$agent_wall" "$agent_cpu" \
  "$(grep -c '^ *Compiling' "$work/agent.log")"
printf '%-28s %8.2f %8.2f\n' 'control plane / agent' \
  "$(echo "$cp_wall / $agent_wall" | bc -l)" "$(echo "$cp_cpu / $agent_cpu" | bc -l)"
echo "per-crate timings: $keep/{control-plane,agent}-$profile.html"
