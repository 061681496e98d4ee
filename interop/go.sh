#!/usr/bin/env bash
# Interop check with a grpc-go client generated from proto/ at check time.
#   interop/go.sh [HOST:PORT]     # or SWITCHBOARD_ADDR; default 127.0.0.1:50051
#   interop/go.sh --build-only    # fetch, generate and build; run nothing (run.sh does
#                                 # this before it starts the server)
#
# Needs Go and the Go module proxy only: protoc-gen-go and protoc-gen-go-grpc are
# `go install`ed (pinned) into interop/bin, and protoc is the one grpcio-tools ships
# in interop/.venv (run.sh makes it; or set PYTHON to a Python with grpcio-tools).
# The client's dependencies are pinned in go/go.mod and go/go.sum; the generated code
# goes to go/gen (git-ignored), made fresh on every run.
# Prints one line per check and a last line `N passed, M failed`; exits 1 on any failure.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
BUILD_ONLY=0
if [[ "${1:-}" == --build-only ]]; then
  BUILD_ONLY=1
  shift
fi
ADDR="${1:-${SWITCHBOARD_ADDR:-127.0.0.1:50051}}"
PY="${PYTHON:-$HERE/.venv/bin/python}"
# protoc-gen-go matches the google.golang.org/protobuf runtime in go/go.mod.
PROTOC_GEN_GO_VERSION="${PROTOC_GEN_GO_VERSION:-v1.36.12}"
PROTOC_GEN_GO_GRPC_VERSION="${PROTOC_GEN_GO_GRPC_VERSION:-v1.6.2}"
INSTALL_TIMEOUT="${GO_INSTALL_TIMEOUT:-900}"

say() { echo "[go] $*" >&2; }
give_up() { echo "FAIL $1"; echo "0 passed, 1 failed"; exit 1; }

command -v go >/dev/null 2>&1 || give_up "no Go toolchain on PATH"
"$PY" -c 'import grpc_tools.protoc' 2>/dev/null || give_up "no grpcio-tools protoc in $PY (run interop/run.sh, or set PYTHON)"

# install NAME PACKAGE VERSION: go install into interop/bin, once per version.
install() {
  local name="$1" package="$2" version="$3" tmp
  if [[ -x "$HERE/bin/$name" && "$(cat "$HERE/bin/.$name.version" 2>/dev/null)" == "$version" ]]; then
    return 0
  fi
  say "installing $name $version (go install, up to ${INSTALL_TIMEOUT}s)"
  mkdir -p "$HERE/bin"
  tmp="$(mktemp -d)"
  if ! (cd "$tmp" && GOBIN="$tmp" GOFLAGS="${GOFLAGS:-} -buildvcs=false" timeout "$INSTALL_TIMEOUT" \
      go install "$package@$version" >&2); then
    rm -rf "$tmp"
    return 1
  fi
  mv "$tmp/$name" "$HERE/bin/$name"
  echo "$version" >"$HERE/bin/.$name.version"
  rm -rf "$tmp"
}
install protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go "$PROTOC_GEN_GO_VERSION" \
  || give_up "go install protoc-gen-go $PROTOC_GEN_GO_VERSION"
install protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc "$PROTOC_GEN_GO_GRPC_VERSION" \
  || give_up "go install protoc-gen-go-grpc $PROTOC_GEN_GO_GRPC_VERSION"

# Generate: the protos' go_package is switchboard.example/gen/switchboard/v1, and the
# client's module is switchboard.example, so the code lands in go/gen/switchboard/v1.
rm -rf "$HERE/go/gen"
mapfile -t protos < <(cd "$ROOT/proto" && find switchboard -name '*.proto' | sort)
(cd "$ROOT/proto" && timeout 120 "$PY" -m grpc_tools.protoc -I . \
  --plugin=protoc-gen-go="$HERE/bin/protoc-gen-go" \
  --plugin=protoc-gen-go-grpc="$HERE/bin/protoc-gen-go-grpc" \
  --go_out="$HERE/go" --go_opt=module=switchboard.example \
  --go-grpc_out="$HERE/go" --go-grpc_opt=module=switchboard.example \
  "${protos[@]}") >&2 || give_up "protoc --go_out --go-grpc_out"
say "generated $(find "$HERE/go/gen" -name '*.go' | wc -l) files with $("$HERE/bin/protoc-gen-go" --version 2>&1), $("$HERE/bin/protoc-gen-go-grpc" --version 2>&1)"

# -mod=readonly: every dependency must already be pinned in go.mod and go.sum.
(cd "$HERE/go" && GOFLAGS="${GOFLAGS:-} -mod=readonly -buildvcs=false" timeout "$INSTALL_TIMEOUT" \
  go build -o "$HERE/bin/switchboard-interop-go" .) >&2 || give_up "go build the client"
if [[ $BUILD_ONLY == 1 ]]; then
  say "built $HERE/bin/switchboard-interop-go"
  exit 0
fi
exec timeout 120 "$HERE/bin/switchboard-interop-go" "$ADDR"
