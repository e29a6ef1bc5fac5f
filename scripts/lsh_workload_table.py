"""Rewrite the figures table of docs/lsh-calibration.md from scripts/results/lsh-*.json
(written by `nearline bench lsh --workload ...`): one row per catalogue measured."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "lsh-calibration.md"
BEGIN, END = "<!-- workload-table:begin -->", "<!-- workload-table:end -->"


def _knobs(p: dict | None) -> str:
    if p is None:
        return "exact search"
    return f"w={p['w']} m={p['m']} L={p['L']} probes={p['probes']} keep={p['sketch_keep']}"


def _r(x: float | None, fmt: str = "{:.2f}") -> str:
    return "n/a (hnswlib never reached it)" if x is None else fmt.format(x)


def rows() -> list[str]:
    out = []
    for path in sorted((ROOT / "scripts" / "results").glob("lsh-*.json")):
        doc = json.loads(path.read_text())
        for s in doc.get("summary", []):
            if "workload" not in s:
                continue
            met = (
                s["calibrated_recall"] >= doc["params"]["target_recall"]
                and s["calibrated_memory_vs_raw"] <= 2.0
                and (s["n"] < 1_000_000 or s["calibrated_vs_exact"] >= 20)
                and (s["calibrated_vs_hnsw"] or 0) >= 0.25
            )
            out.append(
                f"| {s['workload']} | {s['n']:,} x {s['dim']} | {_knobs(s['calibrated_params'])} "
                f"| {s['calibrated_recall']:.3f} | {s['calibrated_qps']:,.0f} "
                f"({s['calibrated_p50_ms']:.2f} / {s['calibrated_p99_ms']:.2f} ms) "
                f"| {s['calibrated_vs_exact']:.1f}x | {_r(s['calibrated_vs_hnsw'])} "
                f"| {s['calibrated_memory_vs_raw']:.2f}x | {s['default_recall']:.3f} at "
                f"{s['default_qps']:,.0f} q/s, {s['default_memory_vs_raw']:.2f}x "
                f"| {s['exact_qps']:,.0f} | {'met' if met else 'NOT met'} | {s['loadavg']} "
                f"| `{path.name}` |"
            )
    return out


def main() -> int:
    head = (
        "| workload | N x d | calibrated setting | recall@10 (held-out taste queries) "
        "| q/s one query (p50 / p99) | vs exact | vs hnswlib at the same recall "
        "| memory / raw | defaults: recall, q/s, memory | exact q/s | all four bars "
        "| load avg | file |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    text = DOC.read_text(encoding="utf-8")
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    DOC.write_text(text[:start] + "\n" + head + "\n" + "\n".join(rows()) + "\n" + text[end:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
