"""Markdown table and PNG chart from `fim_quality.py --postprocess` results (raw vs post-processed).

    python benchmarks/fim_report.py benchmarks/results/fim_*_100.json benchmarks/results/fim_adapter_*.json \
        --out benchmarks/results/fim_quality

Writes OUT.md and OUT.png (matplotlib, from the `stats` extra) and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROWS = [
    ("raw", "pass_at_1", "raw pass@1"),
    ("raw", "parses_in_context", "raw parses %"),
    ("heuristic", "exact_match", "first-line EM"),
    ("heuristic", "pass_at_1", "first-line pass@1"),
    ("postprocessed", "exact_match", "post EM"),
    ("postprocessed", "pass_at_1", "post pass@1"),
    ("postprocessed", "suggestions_shown", "shown %"),
    ("postprocessed", "shown_that_parse_in_context", "shown that parse %"),
]


def load(paths: list[Path]) -> list[tuple[str, str, dict]]:
    out = []
    for p in paths:
        d = json.loads(p.read_text())
        for engine, r in d["engines"].items():
            s = r["summary"]
            if "postprocessed" not in s:
                continue
            # Results of an earlier version of a shipped adapter are kept under a `_stageN_` file name.
            stage = re.search(r"_stage(\d+)_", p.name)
            out.append((f"{d['task']} ({d['n']})", engine + (f" (stage-{stage.group(1)} run)" if stage else ""), s))
    return out


def markdown(results: list[tuple[str, str, dict]]) -> str:
    head = "| set | engine | " + " | ".join(label for _, _, label in ROWS) + " |"
    lines = [head, "|---" * (len(ROWS) + 2) + "|"]
    for task, engine, s in results:
        cells = []
        for group, key, _ in ROWS:
            v = s.get(group, {}).get(key)
            # The first-line rule is the single-line harness's; for other sets it equals raw.
            cells.append("—" if v is None or (group == "heuristic" and not task.startswith("single-line")) else str(v))
        lines.append(f"| {task} | {engine} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def chart(results: list[tuple[str, str, dict]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{task}\n{engine}" for task, engine, _ in results]
    series = [("raw pass@1", lambda s: s["raw"]["pass_at_1"]),
              ("post-processed pass@1", lambda s: s["postprocessed"]["pass_at_1"]),
              ("raw parses %", lambda s: s["raw"]["parses_in_context"]),
              ("shown that parse %", lambda s: s["postprocessed"]["shown_that_parse_in_context"] or 0)]
    width = 0.2
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(results)), 4.5))
    for k, (name, get) in enumerate(series):
        xs = [i + (k - 1.5) * width for i in range(len(results))]
        ax.bar(xs, [get(s) for _, _, s in results], width, label=name)
    ax.set_xticks(range(len(results)), labels, fontsize=8)
    ax.set_ylim(0, 125)
    ax.set_ylabel("%")
    ax.set_title("HumanEval infilling: raw model output vs grammar post-processing")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="output path without extension")
    args = ap.parse_args()
    results = load(args.files)
    if not results:
        raise SystemExit("no post-processed results in these files (run fim_quality.py with --postprocess)")
    md = markdown(results)
    args.out.with_suffix(".md").write_text(md + "\n")
    chart(results, args.out.with_suffix(".png"))
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
