#!/usr/bin/env python3
"""summarize.py RESULTS.tsv: medians per (engine, case), kiln/BuildKit ratios, goals.

Rows of RESULTS.tsv: engine, case, round, value, load1. value is milliseconds, except for
cases starting with "rss " (kilobytes of peak resident memory). Prints a Markdown table.
"""
import statistics
import sys
from collections import defaultdict

# kiln/reference ratio goals, by case; "rss ..." goals are absolute, in MB
GOALS = {
    "parallel-stages cold": 0.9,
    "parallel-stages rebuild": 0.25,
    "many-steps cold": 0.25,
    "many-steps rebuild": 0.25,
    "big-context cold": 0.3,
    "big-context rebuild": 0.15,
    "big-context one-file": 0.25,
    "run --rm true": 0.1,
    "many-steps ci-rebuild": 0.5,
    "parallel-stages ci-rebuild": 0.5,
    "rss big-context cold": 100,
}


def main(path):
    values = defaultdict(list)
    loads = []
    order = []
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 5:
                continue
            engine, case, _round, value, load = parts
            values[(engine, case)].append(float(value))
            loads.append(float(load))
            if case not in order:
                order.append(case)
    print("| case | kiln median | reference median | ratio kiln/ref | goal | met | rounds |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for case in order:
        kiln = values.get(("kiln", case))
        ref = [v for (e, c), v in values.items() if c == case and e != "kiln"]
        ref = ref[0] if ref else None
        goal = GOALS.get(case)
        if case.startswith("rss "):
            mb = statistics.median(kiln) / 1024
            met = "" if goal is None else ("yes" if mb <= goal else "NO")
            print(f"| {case} | {mb:.1f} MB | | | <= {goal} MB | {met} | {len(kiln)} |")
            continue
        km = statistics.median(kiln) if kiln else None
        rm = statistics.median(ref) if ref else None
        ratio = km / rm if km is not None and rm else None
        met = "" if goal is None or ratio is None else ("yes" if ratio <= goal else "NO")
        fmt = lambda ms: "" if ms is None else (f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.0f} ms")
        print(f"| {case} | {fmt(km)} | {fmt(rm)} | {'' if ratio is None else f'{ratio:.3f}'} | "
              f"{'' if goal is None else f'<= {goal}'} | {met} | {len(kiln or [])}/{len(ref or [])} |")
    if loads:
        print()
        print(f"load average (1 min) at the start of the timed commands: min {min(loads):.2f}, "
              f"median {statistics.median(loads):.2f}, max {max(loads):.2f}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
