#!/usr/bin/env bash
# Makes sure Shopify's Toxiproxy server (the chaos suite's fault proxy,
# tests/chaos/toxiproxy.rs) is built, and prints its path. Built once with
# `go install` from the Go module proxy into target/tools/; the suite finds
# it there (or through $TOXIPROXY_SERVER).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=v2.5.0
tools="${CARGO_TARGET_DIR:-target}/tools"
bin="$tools/toxiproxy-server"
stamp="$tools/toxiproxy-server.version"
if [[ -x "$bin" && "$(cat "$stamp" 2>/dev/null)" == "$VERSION" ]]; then
    echo "$bin"
    exit 0
fi
go=$(command -v go || true)
[[ -n "$go" ]] || go=/usr/local/go/bin/go
[[ -x "$go" ]] || { echo "toxiproxy.sh: error: Go is needed to build Toxiproxy (https://go.dev/dl/ or apt-get install golang-go)" >&2; exit 1; }
mkdir -p "$tools"
echo "toxiproxy.sh: building Toxiproxy $VERSION with $go (first run only)" >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The server's package is cmd/server; go install names the binary `server`.
GOBIN="$tmp" "$go" install "github.com/Shopify/toxiproxy/v2/cmd/server@$VERSION" >&2
mv "$tmp/server" "$bin"
echo "$VERSION" >"$stamp"
echo "$bin"
