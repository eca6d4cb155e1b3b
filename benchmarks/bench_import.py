"""`import router` cost, against `import json` as the in-run baseline (fresh interpreter each time).

    python benchmarks/bench_import.py [--runs 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def timed(code: str, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    base = timed("import json", args.runs)
    rows = {"python -c 'import json' (baseline)": base,
            "python -c 'import router'": timed("import router", args.runs),
            "import router + first explain()": timed(
                "import router; router.explain(messages=[{'role':'user','content':'hi'}])", args.runs)}
    print(f"{'what':40} {'median ms':>10} {'minus baseline':>15}")
    for name, v in rows.items():
        print(f"{name:40} {statistics.median(v) * 1e3:10.1f} {(statistics.median(v) - statistics.median(base)) * 1e3:15.1f}")


if __name__ == "__main__":
    main()
