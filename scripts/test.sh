#!/usr/bin/env bash
# The project's test command (README, CI): installs what the tests need,
# starts a real Kafka broker (KRaft, SASL_SSL), runs every test, checks the
# systemd unit, and stops the broker again.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v tinyproxy >/dev/null || [ -x /usr/bin/tinyproxy ] || [ -x /usr/sbin/tinyproxy ] || need_pkgs+=(tinyproxy)
command -v systemd-analyze >/dev/null || need_pkgs+=(systemd)
command -v cmake >/dev/null || need_pkgs+=(cmake)
command -v g++ >/dev/null || need_pkgs+=(g++)
command -v java >/dev/null || need_pkgs+=(openjdk-17-jdk-headless)
# librdkafka 2.12 includes curl.h even when built with our static curl; the header package makes the build independent of that.
[ -e /usr/include/x86_64-linux-gnu/curl/curl.h ] || [ -e /usr/include/curl/curl.h ] || need_pkgs+=(libcurl4-openssl-dev)
command -v mvn >/dev/null || need_pkgs+=(maven)
# The short benchmark below: kcat is its second ceiling, ss counts requests.
command -v kcat >/dev/null || need_pkgs+=(kcat)
command -v ss >/dev/null || need_pkgs+=(iproute2)
# The web console's browser tests (tests/console_browser.rs): headless
# Chromium driven through chromedriver.
[ -x /usr/bin/chromium ] || need_pkgs+=(chromium)
[ -x /usr/bin/chromedriver ] || need_pkgs+=(chromium-driver)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: the tests need these Debian packages: ${need_pkgs[*]}; install them (sudo apt-get install ${need_pkgs[*]}) and run again" >&2
    exit 1
  fi
  echo "installing ${need_pkgs[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# The build takes about 3 GB (target/: test binaries, the benchmark's
# build, the broker's jars and logs). A linker that runs out of disk dies
# with a bus error that does not say so; say it first.
target_dir=${CARGO_TARGET_DIR:-target}
mkdir -p "$target_dir"
free_kb=$(df -Pk "$target_dir" | awk 'NR==2 {print $4}')
if [ -n "$free_kb" ] && [ "$free_kb" -lt $((4 * 1024 * 1024)) ]; then
  echo "warning: only $((free_kb / 1024)) MiB free on the disk of $target_dir; the build and tests need about 3 GB (free some space or set CARGO_TARGET_DIR to a larger disk)" >&2
fi

# The chaos suite's fault proxy (tests/chaos.rs), built with Go once.
TOXIPROXY_SERVER=$(scripts/toxiproxy.sh)
export TOXIPROXY_SERVER

scripts/kafka-broker.sh start
stop_broker() { scripts/kafka-broker.sh stop >/dev/null 2>&1 || true; }
if [ "${KEEP_BROKER:-0}" != 1 ]; then trap stop_broker EXIT; fi

cargo build --workspace --lib --bins --tests
# Includes the chaos suite's short form (tests/chaos.rs, about 10 minutes;
# docs/RELIABILITY.md): its own main prints a table of the scenarios.
cargo test --workspace --lib --bins --tests -- "$@"
# The benchmark's own checks of its pure parts (record layout, percentiles,
# charts, the delaying proxy, the distance ratio); it has no test harness.
cargo test --bench relay
# The web console's benchmark, for a few seconds with 50 agents (its full
# run: cargo bench -p connectivity-control-plane --bench console).
cargo test -p connectivity-control-plane --bench console
scripts/check-unit.sh "${CARGO_TARGET_DIR:-target}/debug/connectivity-agent"
# The benchmark's short form, so that its harness cannot rot: every part
# for a few seconds against the same broker; it asserts nothing about speed
# (docs/PERFORMANCE.md). Skipped when only some tests were asked for.
if [ $# -eq 0 ]; then
  scripts/bench.sh --short
fi
