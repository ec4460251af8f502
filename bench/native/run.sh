#!/usr/bin/env bash
# Launch-overhead benchmark on the fake libcuda test double (CPU only; not a GPU number).
# usage: bench/native/run.sh [native build dir]   (make -C native bench)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
B="${1:-$here/../../native/build}"
B="$(cd "$B" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$B/tools/xpuregion" create "$tmp/region" mem_mib=81920
echo "# managed container (region present): direct vs shim vs shim+limiter, same process" >&2
XPUSHIM_REGION="$tmp/region" LD_PRELOAD="$B/libxpushim.so" LD_LIBRARY_PATH="$B/testdoubles" \
    "$B/bench/bench_launch" "${BENCH_CALLS:-2000000}" "${BENCH_ROUNDS:-7}"
echo "# unmanaged process (no region): pass-through cost" >&2
env -u XPUSHIM_REGION LD_PRELOAD="$B/libxpushim.so" LD_LIBRARY_PATH="$B/testdoubles" \
    "$B/bench/bench_launch" "${BENCH_CALLS:-2000000}" "${BENCH_ROUNDS:-7}"
