#!/usr/bin/env bash
# Fuzz what the agent and the control plane read from peers and files, each
# target for a bounded time (docs/RELIABILITY.md "Fuzzing").
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# SECONDS per target (default 60). Targets (fuzz/fuzz_targets/): batch_frame,
# json_message, json_document, profile, truststore_jks, truststore_pkcs12, truststore_pem;
# default all. Seeds are read from fuzz/corpus/TARGET (checked in, never
# written); what libFuzzer finds goes to target/fuzz/corpus/TARGET, and a
# crashing input to target/fuzz/artifacts/TARGET. Exit 1 when a target crashes.
#
# Needs a nightly toolchain (rustup toolchain install nightly) for the
# sanitizer flags, and cargo-fuzz (installed from crates.io when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(batch_frame json_message json_document profile truststore_jks truststore_pkcs12 truststore_pem)
fi
case $seconds in '' | *[!0-9]*)
  echo "error: SECONDS must be a whole number, got '$seconds' (usage: scripts/fuzz.sh [SECONDS] [TARGET...])" >&2
  exit 64 ;;
esac

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "error: the fuzz targets build with a nightly toolchain; install it with: rustup toolchain install nightly" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi

work=target/fuzz
failed=()
for t in "${targets[@]}"; do
  if [ ! -f "fuzz/fuzz_targets/$t.rs" ]; then
    echo "error: no fuzz target '$t' (see fuzz/fuzz_targets/)" >&2
    exit 64
  fi
  seeds="fuzz/corpus/$t"
  if [ -z "$(ls -A "$seeds" 2>/dev/null)" ]; then
    echo "error: the seed corpus $seeds is empty" >&2
    exit 1
  fi
  mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
  echo "fuzzing $t for ${seconds}s"
  # -rss_limit_mb: a decoder that grows past this is a finding, not noise.
  # Only the profile target needs the agent crate (and so librdkafka).
  features=()
  [ "$t" = profile ] && features=(--features agent)
  if ! cargo +nightly fuzz run --fuzz-dir fuzz "${features[@]}" "$t" "$work/corpus/$t" "$seeds" -- \
      -max_total_time="$seconds" -rss_limit_mb=1024 -timeout=10 \
      -artifact_prefix="$work/artifacts/$t/" -print_final_stats=1; then
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing found crashes in: ${failed[*]} (inputs in $work/artifacts/)" >&2
  exit 1
fi
echo "no crash in ${targets[*]} (${seconds}s each)"
