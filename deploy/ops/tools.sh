#!/usr/bin/env bash
# Fetches the tools deploy/ops/check.sh needs into deploy/ops/.tools/ (git-ignored),
# from package registries only, with no system install. Idempotent: a tool
# already in place (its .ok stamp matches the pinned version) is not fetched again.
#
#   deploy/ops/tools.sh [TOOL...]     TOOL: prometheus kubeconform venv k8s-schemas keda compose-schema
#                                           dockerfile-lint
#                                     (default: all)
#
#   prometheus      Debian's `prometheus` package (prometheus + promtool 2.42):
#                   `apt-get download` + `dpkg-deb -x` (apt-get update only if the download fails)
#   kubeconform     `go install github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION`
#   venv            Python venv with deploy/ops/requirements.txt (PyYAML, jsonschema, grpcio)
#   k8s-schemas     Kubernetes JSON schemas from PyPI `kubernetes-validate`, made usable
#                   by kubeconform offline (opscheck.py k8s-schemas)
#   keda            npm `@kubernetes-models/keda` (KEDA CRD schema, compiled validators)
#   compose-schema  the compose-spec JSON schema shipped in npm `dclint`
#   dockerfile-lint deploy/ops/dockerfile-lint (BuildKit's Dockerfile parser and linter,
#                   Go module github.com/moby/buildkit, pinned in its go.mod/go.sum)
#
# Env: SWITCHBOARD_OPS_TOOLS (default deploy/ops/.tools), PYTHON (default python3).
set -euo pipefail

OPS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TOOLS="${SWITCHBOARD_OPS_TOOLS:-$OPS/.tools}"
PYTHON="${PYTHON:-python3}"

KUBECONFORM_VERSION=v0.8.0              # newest on the Go module proxy when written
KUBERNETES_VALIDATE_VERSION=1.37.0      # PyPI; ships schemas for Kubernetes 1.x releases
KUBE_SCHEMA_VERSIONS="1.30.0 1.37.0"    # validate against the oldest we support and the newest shipped
KEDA_MODELS_VERSION=2.0.0               # npm @kubernetes-models/keda
DCLINT_VERSION=3.1.0                    # npm dclint (ships schemas/compose.schema.json)

mkdir -p "$TOOLS"
say() { printf 'tools: %s\n' "$*" >&2; }
stamp_ok() { [[ -f "$1/.ok" && "$(cat "$1/.ok")" == "$2" ]]; }
# A fresh scratch dir next to the destination; the result is moved into place
# only when complete, so an interrupted fetch never leaves a half tool behind.
scratch() { mktemp -d "$TOOLS/.tmp.$1.XXXXXX"; }
npm_quiet() { timeout 300 npm "$@" --no-audit --no-fund --loglevel=error 2> >(grep -v 'Unknown user config' >&2); }

tool_prometheus() {
  local dest="$TOOLS/prometheus" tmp deb version
  if [[ -x "$dest/usr/bin/promtool" && -f "$dest/.ok" ]]; then return 0; fi
  if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
    say "prometheus: needs apt-get and dpkg-deb (a Debian system)"; return 1
  fi
  tmp="$(scratch prometheus)"
  if ! (cd "$tmp" && timeout 300 apt-get download prometheus); then
    say "prometheus: apt-get download failed; running apt-get update once and retrying"
    timeout 600 apt-get update -qq || say "prometheus: apt-get update failed (not root?)"
    (cd "$tmp" && timeout 300 apt-get download prometheus) \
      || { rm -rf "$tmp"; say "prometheus: cannot download Debian's prometheus package"; return 1; }
  fi
  deb="$(ls "$tmp"/prometheus_*.deb)"
  version="$(dpkg-deb -f "$deb" Version)"
  dpkg-deb -x "$deb" "$tmp/root"
  "$tmp/root/usr/bin/promtool" --version >/dev/null
  rm -rf "$dest" && mv "$tmp/root" "$dest" && rm -rf "$tmp"
  echo "$version" > "$dest/.ok"
  say "prometheus: Debian prometheus $version in $dest/usr/bin"
}

tool_kubeconform() {
  local dest="$TOOLS/bin"
  if [[ -x "$dest/kubeconform" ]] && stamp_ok "$TOOLS/kubeconform" "$KUBECONFORM_VERSION"; then return 0; fi
  command -v go >/dev/null || { say "kubeconform: needs Go"; return 1; }
  mkdir -p "$dest" "$TOOLS/kubeconform"
  (cd "$TOOLS" && GOBIN="$dest" timeout 900 \
    go install "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION") \
    || { say "kubeconform: go install failed"; return 1; }
  echo "$KUBECONFORM_VERSION" > "$TOOLS/kubeconform/.ok"
  say "kubeconform: $KUBECONFORM_VERSION in $dest"
}

tool_venv() {
  local dest="$TOOLS/venv" want tmp
  want="$(sha256sum "$OPS/requirements.txt" | cut -c1-16)"
  if [[ -x "$dest/bin/python" ]] && stamp_ok "$dest" "$want"; then return 0; fi
  rm -rf "$dest"
  timeout 120 "$PYTHON" -m venv "$dest" || { say "venv: $PYTHON -m venv failed"; return 1; }
  timeout 600 "$dest/bin/pip" install --quiet --disable-pip-version-check -r "$OPS/requirements.txt" \
    || { say "venv: pip install -r deploy/ops/requirements.txt failed"; rm -rf "$dest"; return 1; }
  echo "$want" > "$dest/.ok"
  say "venv: $dest ($(tr '\n' ' ' < <(grep -v '^#' "$OPS/requirements.txt")))"
}

tool_k8s_schemas() {
  local dest="$TOOLS/k8s-schemas" want="kubernetes-validate==$KUBERNETES_VALIDATE_VERSION $KUBE_SCHEMA_VERSIONS" tmp
  if stamp_ok "$dest" "$want"; then return 0; fi
  tmp="$(scratch k8s-schemas)"
  timeout 300 "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$tmp" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
    || { rm -rf "$tmp"; say "k8s-schemas: pip download kubernetes-validate failed"; return 1; }
  # shellcheck disable=SC2086
  "$PYTHON" "$OPS/lib/opscheck.py" k8s-schemas "$tmp"/kubernetes_validate-*.whl "$tmp/out" $KUBE_SCHEMA_VERSIONS >&2 \
    || { rm -rf "$tmp"; return 1; }
  rm -rf "$dest" && mv "$tmp/out" "$dest" && rm -rf "$tmp"
  echo "$want" > "$dest/.ok"
  say "k8s-schemas: Kubernetes $KUBE_SCHEMA_VERSIONS from kubernetes-validate $KUBERNETES_VALIDATE_VERSION"
}

tool_keda() {
  local dest="$TOOLS/keda" want="@kubernetes-models/keda@$KEDA_MODELS_VERSION" tmp
  if stamp_ok "$dest" "$want"; then return 0; fi
  if ! command -v npm >/dev/null || ! command -v node >/dev/null; then say "keda: needs node and npm"; return 1; fi
  tmp="$(scratch keda)"
  echo '{"private": true}' > "$tmp/package.json"
  npm_quiet install --prefix "$tmp" "$want" >&2 || { rm -rf "$tmp"; say "keda: npm install $want failed"; return 1; }
  rm -rf "$dest" && mv "$tmp" "$dest"
  echo "$want" > "$dest/.ok"
  say "keda: $want in $dest/node_modules"
}

tool_compose_schema() {
  local dest="$TOOLS/compose-spec" want="dclint@$DCLINT_VERSION" tmp
  if [[ -f "$dest/compose.schema.json" ]] && stamp_ok "$dest" "$want"; then return 0; fi
  command -v npm >/dev/null || { say "compose-schema: needs npm"; return 1; }
  tmp="$(scratch compose)"
  (cd "$tmp" && npm_quiet pack "$want" >/dev/null) || { rm -rf "$tmp"; say "compose-schema: npm pack $want failed"; return 1; }
  tar -xzf "$tmp"/dclint-*.tgz -C "$tmp" package/schemas/compose.schema.json \
    || { rm -rf "$tmp"; say "compose-schema: $want has no schemas/compose.schema.json"; return 1; }
  mkdir -p "$tmp/out" && mv "$tmp/package/schemas/compose.schema.json" "$tmp/out/"
  rm -rf "$dest" && mv "$tmp/out" "$dest" && rm -rf "$tmp"
  echo "$want" > "$dest/.ok"
  say "compose-schema: compose-spec schema from $want"
}

tool_dockerfile_lint() {
  local src="$OPS/dockerfile-lint" want
  want="$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" | sha256sum | cut -c1-16)"
  if [[ -x "$TOOLS/bin/dockerfile-lint" ]] && stamp_ok "$TOOLS/dockerfile-lint" "$want"; then return 0; fi
  command -v go >/dev/null || { say "dockerfile-lint: needs Go"; return 1; }
  mkdir -p "$TOOLS/bin" "$TOOLS/dockerfile-lint"
  (cd "$src" && GOFLAGS=-mod=readonly timeout 900 go build -o "$TOOLS/bin/dockerfile-lint" .) \
    || { say "dockerfile-lint: go build failed"; return 1; }
  echo "$want" > "$TOOLS/dockerfile-lint/.ok"
  say "dockerfile-lint: built from deploy/ops/dockerfile-lint ($(grep 'moby/buildkit v' "$src/go.mod" | xargs))"
}

[[ $# -gt 0 ]] || set -- prometheus kubeconform venv k8s-schemas keda compose-schema dockerfile-lint
for tool in "$@"; do
  case "$tool" in
    prometheus) tool_prometheus ;;
    kubeconform) tool_kubeconform ;;
    venv) tool_venv ;;
    k8s-schemas) tool_k8s_schemas ;;
    keda) tool_keda ;;
    compose-schema) tool_compose_schema ;;
    dockerfile-lint) tool_dockerfile_lint ;;
    *) say "unknown tool $tool"; exit 2 ;;
  esac
done
