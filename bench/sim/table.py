"""Render the all-variant table (unallocated GPU % at 100 % arrival, mean ± sd over seeds).

    .venv/bin/python bench/sim/table.py DIR [DIR ...]

Each DIR holds ``<variant>.json`` files written by ``xpupool simulate --json`` (e.g. by
bench/sim/all_variants.sh); policies found in several DIRs are taken from the last one.
The published FGD column comes from the FGD artifact's ``analysis_allo_discrete.csv``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from xpupool.sim.openb import trace_dir
from xpupool.sim.runner import published_unallocated

VARIANTS = ("default", "cpu050", "cpu100", "cpu200", "cpu250", "gpushare40", "gpushare80", "gpushare100",
            "multigpu20", "multigpu30", "multigpu50", "gpuspec10", "gpuspec20", "gpuspec25", "gpuspec33")
COLUMNS = ("bestfit", "fgd", "xpupool")


def main() -> None:
    dirs = [Path(d) for d in sys.argv[1:]]
    expected = trace_dir() / "fgd_expected_results" / "analysis_allo_discrete.csv"
    print("| Workload | BestFit (ours) | FGD (ours) | **xpupool** | xpupool vs FGD | FGD published | "
          "xpupool p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for v in VARIANTS:
        pol: dict[str, Any] = {}
        for d in dirs:
            f = d / f"{v}.json"
            if f.exists():
                pol.update(json.loads(f.read_text())["policies"])
        cells = []
        for name in COLUMNS:
            s = pol.get(name, {}).get("unallocated_pct_at_100")
            cells.append(f"{s['mean']:.2f} ± {s['sd']:.2f}" if s else "–")
        fgd = pol.get("fgd", {}).get("unallocated_pct_at_100", {}).get("mean")
        ours = pol.get("xpupool", {}).get("unallocated_pct_at_100", {}).get("mean")
        rel = f"{100 * (ours - fgd) / fgd:+.0f} %" if fgd and ours else "–"
        pub = published_unallocated(expected, v).get("fgd", {}) if expected.exists() else {}
        pub_s = f"{np.mean(list(pub.values())):.2f} ± {np.std(list(pub.values()), ddof=1):.2f}" if pub else "–"
        p99 = pol.get("xpupool", {}).get("decision_ms", {}).get("p99")
        cells_s = " | ".join(cells[:2]) + f" | **{cells[2]}**"
        print(f"| {v} | {cells_s} | {rel} | {pub_s} | {f'{p99:.1f}' if p99 is not None else '–'} |")


if __name__ == "__main__":
    main()
