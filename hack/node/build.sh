#!/usr/bin/env bash
# Builds and installs what xpupool's real test node needs besides the Kubernetes binaries
# (those come from hack/kube/build.sh: kubelet, kube-controller-manager, kube-proxy):
#   * containerd 2.x (daemon, runc shim v2, ctr) from the Go module proxy, pinned in
#     hack/node/containerd/go.mod, built CGO-free (static) and cached;
#   * Debian packages: runc, CNI plugins (bridge, host-local, loopback), iptables + conntrack
#     (kube-proxy), busybox-static (a shell image for node tests), installed with apt-get when missing (CI starts from a clean machine).
# Test tooling only: none of this is product code.
#
# Contract (same as hack/kube/build.sh):
#   * idempotent: builds only what is missing from the cache dir;
#   * cache dir: ${XPUPOOL_NODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xpupool/node-bins/<pin>},
#     <pin> = containerd-<version> read from hack/node/containerd/go.mod;
#   * prints the bin dir as the LAST line of stdout (progress goes to stderr);
#   * appends "<binary> <seconds> <date>" to <bin dir>/build-times.txt for every build;
#   * a concurrent second run waits on a lock instead of building twice.
# Env: GO (go command), XPUPOOL_NODE_BUILD_P (go build -p, default 2),
#      XPUPOOL_NODE_NO_APT=1 (never run apt-get; warn about missing packages instead, as when
#      not root: the node tests then skip, or fail under $CI/$REQUIRE_E2E).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { echo "hack/node/build.sh: $*" >&2; }

# --- Debian packages ----------------------------------------------------------------------
# package:file-it-provides (checked instead of dpkg state, so a manual install also counts).
packages=(runc:/usr/sbin/runc containernetworking-plugins:/usr/lib/cni/bridge
  iptables:/usr/sbin/iptables conntrack:/usr/sbin/conntrack busybox-static:/bin/busybox)
missing=()
for entry in "${packages[@]}"; do
  [[ -e "${entry#*:}" ]] || missing+=("${entry%%:*}")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  if [[ "${XPUPOOL_NODE_NO_APT:-}" == 1 || $(id -u) -ne 0 ]]; then
    # Not fatal here: the node tests skip with this reason (and fail under $CI/$REQUIRE_E2E).
    log "WARNING: missing Debian packages: ${missing[*]} (as root: apt-get install -y ${missing[*]})"
    missing=()
  fi
fi
if [[ ${#missing[@]} -gt 0 ]]; then
  log "installing Debian packages: ${missing[*]}"
  # apt's own lock serialises concurrent installs; update only when the lists are missing.
  if ! apt-get install -y --no-install-recommends "${missing[@]}" >&2; then
    apt-get update >&2
    apt-get install -y --no-install-recommends "${missing[@]}" >&2
  fi
fi

# --- containerd -----------------------------------------------------------------------------
version="$(awk '$1 == "github.com/containerd/containerd/v2" { print $2; exit }' "$here/containerd/go.mod")"
if [[ -z "$version" ]]; then
  log "cannot read the containerd version from hack/node/containerd/go.mod"
  exit 1
fi
pin="containerd-$version"
bin_dir="${XPUPOOL_NODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xpupool/node-bins/$pin}"
mkdir -p "$bin_dir"
exec 9>"$bin_dir/.lock"
flock 9

find_go() {
  if [[ -n "${GO:-}" ]]; then return 0; fi
  if command -v go >/dev/null 2>&1; then GO=go
  elif [[ -x /usr/local/go/bin/go ]]; then GO=/usr/local/go/bin/go
  else log "no Go toolchain found (put go on PATH or set GO=...)"; exit 1
  fi
}

export CGO_ENABLED=0 GOTOOLCHAIN=local GONOSUMDB="*" GOSUMDB=off
export GOFLAGS="-trimpath -buildvcs=false -mod=readonly"
parallel="${XPUPOOL_NODE_BUILD_P:-2}"
# No btrfs/devmapper/zfs snapshotters (overlayfs is what the test node uses); static, no cgo.
tags="urfave_cli_no_docs no_btrfs no_devmapper no_zfs osusergo netgo static_build"
ldflags="-s -w -X github.com/containerd/containerd/v2/version.Version=$version"

build() {
  local name="$1" extra_tags="${2:-}"
  if [[ -x "$bin_dir/$name" ]]; then
    log "$name present"
    return 0
  fi
  find_go
  log "building $name $version (-p $parallel); minutes on a cold cache"
  local start tmp
  start=$(date +%s)
  tmp="$(mktemp -d "$bin_dir/.build.XXXXXX")"
  if ! (cd "$here/containerd" && "$GO" build -p "$parallel" -tags "$tags $extra_tags" -ldflags "$ldflags" \
      -o "$tmp/$name" "github.com/containerd/containerd/v2/cmd/$name"); then
    rm -rf "$tmp"
    log "building $name failed"
    exit 1
  fi
  mv -f "$tmp/$name" "$bin_dir/$name"
  rmdir "$tmp"
  echo "$name $(($(date +%s) - start)) $(date -u +%Y-%m-%dT%H:%M:%SZ)" >> "$bin_dir/build-times.txt"
  log "built $name in $(($(date +%s) - start)) s"
}

build containerd
build containerd-shim-runc-v2 no_grpc
build ctr

echo "$pin" > "$bin_dir/VERSION"
echo "$bin_dir"
