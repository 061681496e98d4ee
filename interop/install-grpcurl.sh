#!/usr/bin/env bash
# Prints the path of a grpcurl to use, installing one into interop/bin if none is there.
# Order: $GRPCURL, interop/bin/grpcurl, grpcurl on PATH, else `go install` (Go module proxy).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
GRPCURL_VERSION="${GRPCURL_VERSION:-v1.9.4}"
INSTALL_TIMEOUT="${GRPCURL_INSTALL_TIMEOUT:-900}"

if [[ -n "${GRPCURL:-}" ]]; then
  [[ -x "$GRPCURL" ]] || { echo "GRPCURL=$GRPCURL is not executable" >&2; exit 1; }
  echo "$GRPCURL"; exit 0
fi
if [[ -x "$HERE/bin/grpcurl" ]]; then
  echo "$HERE/bin/grpcurl"; exit 0
fi
if command -v grpcurl >/dev/null 2>&1; then
  command -v grpcurl; exit 0
fi

command -v go >/dev/null 2>&1 || { echo "grpcurl is missing and there is no Go toolchain to install it" >&2; exit 1; }
echo "[interop] installing grpcurl $GRPCURL_VERSION into $HERE/bin (go install, up to ${INSTALL_TIMEOUT}s)" >&2
mkdir -p "$HERE/bin"
# Build in a scratch dir so a partial install never leaves a broken interop/bin/grpcurl.
tmp_bin="$(mktemp -d)"
trap 'rm -rf "$tmp_bin"' EXIT
(
  cd "$tmp_bin"
  GOBIN="$tmp_bin" GOFLAGS="${GOFLAGS:-} -buildvcs=false" timeout "$INSTALL_TIMEOUT" \
    go install -ldflags "-X main.version=$GRPCURL_VERSION" \
    "github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL_VERSION" >&2
)
mv "$tmp_bin/grpcurl" "$HERE/bin/grpcurl"
echo "[interop] installed $("$HERE/bin/grpcurl" -version 2>&1)" >&2
echo "$HERE/bin/grpcurl"
