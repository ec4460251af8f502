#!/usr/bin/env bash
# Builds the upstream binaries xpupool's real-control-plane tests need (kube-apiserver,
# kube-scheduler, etcd; with arguments also the node's kubelet, kube-controller-manager and
# kube-proxy) from the Go module proxy, through the pinned wrapper modules in hack/kube/k8s and
# hack/kube/etcd. Test tooling only: none of this is product code.
#
# Usage: build.sh [BINARY...]   (default: etcd kube-apiserver kube-scheduler)
#
# Contract:
#   * idempotent: builds only the binaries missing from the cache dir, never rebuilds others;
#   * cache dir: ${XPUPOOL_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xpupool/kube-bins/<pin>}
#     where <pin> names the pinned versions (read from the wrapper go.mod files);
#   * prints the bin dir as the LAST line of stdout (progress goes to stderr);
#   * appends "<binary> <seconds> <date>" to <bin dir>/build-times.txt for every build;
#   * a concurrent second run waits on a lock instead of building twice.
# Env: GO (go command; default: `go` on PATH, else the Go distribution's default install dir),
#      XPUPOOL_KUBE_BUILD_P (go build -p, default 2).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# find_go: sets GO; only called when something has to be built (cached runs need no Go).
find_go() {
  if [[ -n "${GO:-}" ]]; then
    return 0
  fi
  if command -v go >/dev/null 2>&1; then
    GO=go
  elif [[ -x /usr/local/go/bin/go ]]; then  # where the official Go distribution installs
    GO=/usr/local/go/bin/go
  else
    echo "hack/kube/build.sh: no Go toolchain found (put go on PATH or set GO=...)" >&2
    exit 1
  fi
}

# pinned_version <go.mod> <module>: the version the wrapper module requires.
pinned_version() {
  awk -v m="$2" '$0 !~ /=>/ { for (i = 1; i < NF; i++) if ($i == m && $(i + 1) ~ /^v[0-9]/) { print $(i + 1); exit } }' "$1"
}
k8s_version="$(pinned_version "$here/k8s/go.mod" k8s.io/kubernetes)"
etcd_version="$(pinned_version "$here/etcd/go.mod" go.etcd.io/etcd/server/v3)"
if [[ -z "$k8s_version" || -z "$etcd_version" ]]; then
  echo "hack/kube/build.sh: cannot read pinned versions from hack/kube/*/go.mod" >&2
  exit 1
fi
pin="k8s-${k8s_version}_etcd-${etcd_version}"
bin_dir="${XPUPOOL_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xpupool/kube-bins/$pin}"
mkdir -p "$bin_dir"

export CGO_ENABLED=0
export GOTOOLCHAIN=local
export GOFLAGS="-trimpath -buildvcs=false -mod=readonly"
# go.sum is committed; the checksum database is not needed (and may be unreachable).
export GONOSUMDB="*" GOSUMDB=off
parallel="${XPUPOOL_KUBE_BUILD_P:-2}"

exec 9>"$bin_dir/.lock"
if command -v flock >/dev/null 2>&1; then
  flock 9
fi

log() { echo "hack/kube/build.sh: $*" >&2; }

# build <module dir> <out name> <package> [ldflags]
build() {
  local dir="$1" name="$2" pkg="$3" ldflags="${4:-}"
  if [[ -x "$bin_dir/$name" ]]; then
    log "$name present"
    return 0
  fi
  find_go
  log "building $name ($pkg, -p $parallel); this takes minutes on a cold cache"
  local start end tmp
  start=$(date +%s)
  tmp="$(mktemp -d "$bin_dir/.build.XXXXXX")"
  if ! (cd "$dir" && "$GO" build -p "$parallel" -ldflags "-s -w $ldflags" -o "$tmp/$name" "$pkg"); then
    rm -rf "$tmp"
    log "building $name failed"
    exit 1
  fi
  mv -f "$tmp/$name" "$bin_dir/$name"
  rmdir "$tmp"
  end=$(date +%s)
  echo "$name $((end - start)) $(date -u +%Y-%m-%dT%H:%M:%SZ)" >> "$bin_dir/build-times.txt"
  log "built $name in $((end - start)) s"
}

minor="${k8s_version#v1.}"; minor="${minor%%.*}"
k8s_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  k8s_ldflags+=" -X $pkg.gitTreeState=clean"
done

wanted=("$@")
if [[ ${#wanted[@]} -eq 0 ]]; then
  wanted=(etcd kube-apiserver kube-scheduler)
fi
for name in "${wanted[@]}"; do
  case "$name" in
    etcd) build "$here/etcd" etcd go.etcd.io/etcd/server/v3 ;;
    # The node's binaries (kubelet, kube-controller-manager, kube-proxy) come from the same
    # pinned module as the apiserver, so node and control plane are always the same release.
    kube-apiserver | kube-scheduler | kubelet | kube-controller-manager | kube-proxy)
      build "$here/k8s" "$name" "k8s.io/kubernetes/cmd/$name" "$k8s_ldflags" ;;
    *) echo "hack/kube/build.sh: unknown binary $name" >&2; exit 2 ;;
  esac
done

echo "$pin" > "$bin_dir/VERSION"
echo "$bin_dir"
