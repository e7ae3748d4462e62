"""A table of ab_serve.py's rows.json: per model and level, each contender's images/s and p50 per
round (load average before), and the pair's ratio per round.

    python docs/performance/experiments/ab_report.py DIR/rows.json [--base base --new new]
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("rows", type=Path)
    ap.add_argument("--base", default="base")
    ap.add_argument("--new", default="new")
    args = ap.parse_args()
    rows = json.loads(args.rows.read_text())["rows"]
    for r in rows:  # rows written before ab_serve used the families bench's closed loop
        r.setdefault("latency_p50_s", r.get("p50_s"))
    by = defaultdict(dict)
    for r in rows:
        by[(r["model"], r["c"], r.get("candidates", 1))][(r["contender"], r["round"])] = r
    rounds = sorted({r["round"] for r in rows})
    print("| model | c | candidates | contender | " + " | ".join(f"round {i}: images/s, p50 s (load)" for i in rounds)
          + " | ratio new/base per round |")
    print("|---|---|---|---|" + "---|" * len(rounds) + "---|")
    for (model, c, k), cells in by.items():
        ratios = [cells[(args.new, i)]["images_per_s"] / cells[(args.base, i)]["images_per_s"]
                  for i in rounds if (args.new, i) in cells and (args.base, i) in cells]
        for who in (args.base, args.new):
            vals = [f"{cells[(who, i)]['images_per_s']:.4g}, {cells[(who, i)]['latency_p50_s']:.3g} "
                    f"({cells[(who, i)]['loadavg_before'].split()[0]})" if (who, i) in cells else "-" for i in rounds]
            ratio = ", ".join(f"{x:.2f}x" for x in ratios) if who == args.new else ""
            print(f"| {model} | {c} | {k} | {who} | " + " | ".join(vals) + f" | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
