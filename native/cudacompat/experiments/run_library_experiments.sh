#!/usr/bin/env bash
# Experiment (not a test, not in `make test`): drive CuPy and cuBLAS on the fake libcuda TEST DOUBLE
# through cudacompat and report which driver calls they make. Needs ~1.3 GB of wheels, installed
# once into a cache venv (cupy-cuda12x + NVRTC: ~470 MB, 64 s on the dev VM; cuBLAS: 855 MB).
# usage: run_library_experiments.sh [--calls]   (--calls: a full driver-call histogram via gdb)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
NATIVE="$(cd "$HERE/../.." && pwd)"
B="$NATIVE/build"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/xpupool/cudart-libs"
PY="${PYTHON:-python3.11}"
[ -x "$CACHE/venv/bin/python" ] || "$PY" -m venv "$CACHE/venv"
"$CACHE/venv/bin/pip" install -q cupy-cuda12x==14.2.0 nvidia-cuda-nvrtc-cu12==12.9.86 \
    nvidia-cuda-runtime-cu12==12.9.79 nvidia-cublas-cu12==12.9.3.13
SITE="$("$CACHE/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
CUDART="$SITE/nvidia/cuda_runtime/lib/libcudart.so.12"
CUBLAS_DIR="$SITE/nvidia/cublas/lib"
# the project's venv builds the native tree (its wheels select the headers); the cache venv runs
make -s -C "$NATIVE" PYTHON="$(cd "$NATIVE/.." && pwd)/.venv/bin/python" all >/dev/null
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
cc -O1 -o "$OUT/cublas_calls" "$HERE/cublas_calls.c" -ldl

calls() { # NAME CMD...: a histogram of the double's exports hit, from gdb breakpoints
    local name="$1"
    shift
    {
        echo "set pagination off"; echo "set breakpoint pending on"; echo "break cuInit"; echo "run"
        nm -D --defined-only "$B/testdoubles/libcuda.so.1" | awk '($2=="T"||$2=="W") && $3 ~ /^cu[A-Z]/ {
            print "break " $3; print "commands"; print "silent"; print "printf \"CALL " $3 "\\n\""; print "continue"; print "end" }'
        echo "continue"
    } > "$OUT/gdb"
    gdb -q -batch -x "$OUT/gdb" --args "$@" 2>&1 | awk '/^CALL/ {n[$2]++} END {for (k in n) print n[k], k}' |
        sort -rn > "$OUT/$name.calls"
    echo "== driver calls made by $name (after cuInit), count name:"
    cat "$OUT/$name.calls"
}

export LD_LIBRARY_PATH="$B/testdoubles:$CUBLAS_DIR"
echo "== cuBLAS 12.9.3.13 on the double"
FAKE_CUDA_TRACE="$OUT/cublas.trace" "$OUT/cublas_calls" "$CUDART" "$CUBLAS_DIR/libcublas.so.12"
grep -E "^(library|function)" "$OUT/cublas.trace" || true
echo "== CuPy 14.2.0 on the double"
FAKE_CUDA_TRACE="$OUT/cupy.trace" CUPY_CACHE_DIR="$OUT/cupy-cache" "$CACHE/venv/bin/python" "$HERE/cupy_calls.py"
grep -E "^(module|function)" "$OUT/cupy.trace" || true
echo "== CuPy under libxpushim with a 512 MiB slice"
"$B/tools/xpuregion" create "$OUT/region" mem_mib=512
XPUSHIM_LOG=0 XPUSHIM_REGION="$OUT/region" LD_PRELOAD="$B/libxpushim.so" CUPY_CACHE_DIR="$OUT/cupy-cache" \
    "$CACHE/venv/bin/python" "$HERE/cupy_calls.py"
if [ "${1:-}" = --calls ]; then
    calls cublas "$OUT/cublas_calls" "$CUDART" "$CUBLAS_DIR/libcublas.so.12"
    CUPY_CACHE_DIR="$OUT/cupy-cache" calls cupy "$CACHE/venv/bin/python" "$HERE/cupy_calls.py"
fi
