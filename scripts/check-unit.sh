#!/usr/bin/env bash
# Check systemd/connectivity-agent.service the way systemd will see it once
# installed: lay out a temporary root with the unit in /etc/systemd/system and
# the freshly built binary at /usr/local/bin/connectivity-agent (the unit's
# ExecStart), then
#   1. `systemd-analyze verify` must print nothing at all (unknown keys and
#      bad values are only warnings there, with exit code 0, so any output
#      fails the check);
#   2. `systemd-analyze security --offline` must rate the unit at or below
#      MAX_EXPOSURE (1.5, "OK").
#
# Usage: scripts/check-unit.sh path/to/built/connectivity-agent
set -euo pipefail

MAX_EXPOSURE=1.5
unit_name=connectivity-agent.service
here=$(cd "$(dirname "$0")/.." && pwd)
unit_src="$here/systemd/$unit_name"

if [[ $# -ne 1 ]]; then
    echo "usage: $0 path/to/built/connectivity-agent" >&2
    exit 2
fi
binary=$1
if [[ ! -x $binary ]]; then
    echo "check-unit: $binary is not an executable file (build it first: cargo build)" >&2
    exit 2
fi

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "check-unit: systemd-analyze is missing; installing Debian's systemd package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq systemd >/dev/null
fi
echo "check-unit: $(systemd-analyze --version | head -n1)"

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/etc/systemd/system" "$root/usr/local/bin" "$root/usr/lib/systemd"
install -m 0644 "$unit_src" "$root/etc/systemd/system/$unit_name"
install -m 0755 "$binary" "$root/usr/local/bin/connectivity-agent"
# The units ours depends on (network-online.target, sysinit.target, ...).
for dir in /usr/lib/systemd/system /lib/systemd/system; do
    if [[ -d $dir ]]; then
        cp -a "$dir" "$root/usr/lib/systemd/"
        break
    fi
done

echo "check-unit: systemd-analyze verify $unit_name"
verify_out=$(systemd-analyze verify --man=no --root="$root" "$unit_name" 2>&1) || {
    echo "$verify_out" >&2
    echo "check-unit: FAIL: systemd-analyze verify rejected the unit" >&2
    exit 1
}
if [[ -n $verify_out ]]; then
    echo "$verify_out" >&2
    echo "check-unit: FAIL: systemd-analyze verify printed warnings (above)" >&2
    exit 1
fi

echo "check-unit: systemd-analyze security --offline=yes $unit_name"
# --threshold counts tenths (15 = 1.5); the exit code and the printed score
# are both checked so a change in either cannot hide a regression.
threshold=$(awk -v m="$MAX_EXPOSURE" 'BEGIN { printf "%d", m * 10 + 0.5 }')
set +e
security_out=$(systemd-analyze security --offline=yes --root="$root" --threshold="$threshold" "$unit_name" 2>&1)
security_rc=$?
set -e
score=$(printf '%s\n' "$security_out" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' | tail -n1)
if [[ -z $score ]]; then
    echo "$security_out" >&2
    echo "check-unit: FAIL: no exposure level in systemd-analyze security output" >&2
    exit 1
fi
if [[ $security_rc -ne 0 ]] || awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s > m) }'; then
    printf '%s\n' "$security_out" | grep -F '✗' >&2 || true
    echo "check-unit: FAIL: exposure level $score is above $MAX_EXPOSURE" >&2
    exit 1
fi
printf '%s\n' "$security_out" | grep -F '✗' || true
echo "check-unit: ok: verify clean, exposure level $score (max $MAX_EXPOSURE)"
