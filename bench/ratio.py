#!/usr/bin/env python3
"""Ratios to nginx from harness output (compare.sh or bench/ab.sh), run by run, then the median.

    bench/ratio.py run-1.jsonl run-2.jsonl run-3.jsonl

A run starts at each "direct" line; every figure is the contender's over nginx's in the same run
(memory per idle connection is shown in KB, not as a ratio).
"""

from __future__ import annotations

import json
import statistics
import sys

COLUMNS = [
    ("msgs_per_s", "echo"),
    ("big_mb_per_s", "256K"),
    ("sessions_per_s", "sessions"),
    ("http_rps", "http"),
    ("kb_per_idle_conn", "KB/idle"),
    ("cpu_us_per_msg", "cpu/msg"),
    ("cpu_us_per_session", "cpu/session"),
    ("cpu_us_per_request", "cpu/request"),
]


def runs(paths: list[str]) -> list[dict[str, dict[str, float]]]:
    found: list[dict[str, dict[str, float]]] = []
    for path in paths:
        with open(path) as lines:
            for line in lines:
                if not line.startswith("{"):
                    continue
                row = json.loads(line)
                if row["name"] == "direct" or not found:
                    found.append({})
                found[-1][row["name"]] = row
    return [run for run in found if "nginx" in run]


def figure(row: dict[str, float], nginx: dict[str, float], key: str) -> float | None:
    value, base = row.get(key), nginx.get(key)
    if value is None:
        return None
    if key == "kb_per_idle_conn":
        return float(value)
    return value / base if base else None


def main(paths: list[str]) -> None:
    table: dict[str, dict[str, list[float]]] = {}
    for i, run in enumerate(runs(paths), 1):
        print(f"run {i}")
        for name, row in run.items():
            cells = []
            for key, label in COLUMNS:
                value = figure(row, run["nginx"], key)
                if value is not None:
                    table.setdefault(name, {}).setdefault(label, []).append(value)
                cells.append(f"{label} {'-' if value is None else format(value, '.2f')}")
            print(f"  {name:16} " + "  ".join(cells))
    print("median")
    for name, columns in table.items():
        cells = [f"{label} {statistics.median(columns[label]):.2f}" for _, label in COLUMNS if label in columns]
        print(f"  {name:16} " + "  ".join(cells))


if __name__ == "__main__":
    main(sys.argv[1:])
