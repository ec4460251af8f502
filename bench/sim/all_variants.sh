#!/usr/bin/env bash
# Replay every FGD workload variant (seeds 42-51, 100 % arrival) for the given policies.
# Usage: bench/sim/all_variants.sh OUTDIR POLICIES [SEEDS] [JOBS]
#   e.g. bench/sim/all_variants.sh out/xp/final bestfit,fgd,xpupool 42-51 2
# Writes OUTDIR/<variant>.json (runner summary format); bench/sim/table.py renders the table.
set -euo pipefail
out=${1:?outdir}; policies=${2:?policies}; seeds=${3:-42-51}; jobs=${4:-2}
mkdir -p "$out"
for v in default cpu050 cpu100 cpu200 cpu250 gpushare40 gpushare80 gpushare100 \
         multigpu20 multigpu30 multigpu50 gpuspec10 gpuspec20 gpuspec25 gpuspec33; do
  .venv/bin/xpupool simulate --variant "$v" --policy "$policies" --seeds "$seeds" --jobs "$jobs" \
    --no-compare-published --json "$out/$v.json" > "$out/$v.log" 2>&1
  echo "$v done $(date +%H:%M:%S)"
done
