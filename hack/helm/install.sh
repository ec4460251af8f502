#!/usr/bin/env bash
# Installs a pinned `helm` binary for xpupool's chart checks (tests/deploy), built from the Go
# module proxy with `go install`, cached per version. Test tooling only: not product code.
#
# Contract:
#   * pinned: HELM_VERSION below is the only version used (override with XPUPOOL_HELM_VERSION
#     for experiments; tests use whatever binary this script prints);
#   * idempotent: builds only when the cached binary is missing;
#   * cache dir: ${XPUPOOL_HELM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xpupool/helm/<version>};
#   * prints the absolute path of the helm binary as the LAST line of stdout (progress: stderr);
#   * `install.sh --path` prints that path without building (exit 1 if it is not built yet);
#   * a concurrent second run waits on a lock instead of building twice.
# Env: GO (go command; default `go` on PATH, else /usr/local/go/bin/go), XPUPOOL_HELM_BUILD_P
#      (go build -p, default 2).
set -euo pipefail

HELM_VERSION="${XPUPOOL_HELM_VERSION:-v3.22.0}"
# Kubernetes version helm reports as .Capabilities.KubeVersion when rendering offline (`helm
# template`); matches hack/kube/k8s (the apiserver the e2e tests run against).
KUBE_MAJOR=1
KUBE_MINOR=36

cache_dir="${XPUPOOL_HELM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xpupool/helm/$HELM_VERSION}"
helm_bin="$cache_dir/helm"

if [[ "${1:-}" == "--path" ]]; then
  echo "$helm_bin"
  [[ -x "$helm_bin" ]]
  exit $?
fi

log() { echo "hack/helm/install.sh: $*" >&2; }

mkdir -p "$cache_dir"
exec 9>"$cache_dir/.lock"
if command -v flock >/dev/null 2>&1; then
  flock 9
fi

if [[ -x "$helm_bin" ]]; then
  log "helm $HELM_VERSION present"
  echo "$helm_bin"
  exit 0
fi

if [[ -z "${GO:-}" ]]; then
  if command -v go >/dev/null 2>&1; then
    GO=go
  elif [[ -x /usr/local/go/bin/go ]]; then
    GO=/usr/local/go/bin/go
  else
    log "no Go toolchain found (set GO=/path/to/go); cannot build helm $HELM_VERSION"
    exit 1
  fi
fi

export CGO_ENABLED=0
export GOFLAGS="-trimpath -buildvcs=false"
parallel="${XPUPOOL_HELM_BUILD_P:-2}"
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$KUBE_MAJOR"
ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$KUBE_MINOR"
ldflags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=$KUBE_MAJOR"
ldflags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$KUBE_MINOR"

log "building helm $HELM_VERSION with $("$GO" version) (-p $parallel); minutes on a cold cache"
start=$(date +%s)
tmp="$(mktemp -d "$cache_dir/.build.XXXXXX")"
GOBIN="$tmp" "$GO" install -p "$parallel" -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
mv -f "$tmp/helm" "$helm_bin"
rmdir "$tmp"
end=$(date +%s)
echo "helm $HELM_VERSION $((end - start)) s $(date -u +%Y-%m-%dT%H:%M:%SZ)" >> "$cache_dir/build-times.txt"
log "built helm in $((end - start)) s"
echo "$helm_bin"
