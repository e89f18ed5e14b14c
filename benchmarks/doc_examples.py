"""How far verified generation can see: the docstring examples of HumanEval and MBPP+ problems, read as the server
reads them (`server/core/doc_examples.py`) and run in its sandbox (`server/core/verification.py`). No model.

Per dataset: the problems whose docstring (the file `generate_function.py` opens: signature and docstring) gives
at least one example, the examples by kind, and whether the dataset's canonical solution passes its own examples
(a wrong reading would reject correct bodies: the failures are listed with what the solution gave). With
`--records FILE` (a `generate_function.py --records` result): the bodies that run applied, judged by their
examples, against the hidden tests' verdict (how often a body that passes its examples passes the tests, and one
that fails them fails the tests).

    python benchmarks/doc_examples.py --datasets humaneval,mbppplus
    python benchmarks/doc_examples.py --datasets humaneval --records benchmarks/results/generate_function/humaneval_full_chat_0.5b_cpu_xeon.json

Prints one JSON object on stdout (and --out FILE); failures on stderr.
"""

from __future__ import annotations

import argparse
import ast
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from generate_function import DATASETS, Problem, _humaneval, _mbppplus, apply_edit  # noqa: E402

from intarsia.grammars.registry import get_language  # noqa: E402
from intarsia.server.core import doc_examples as X  # noqa: E402
from intarsia.server.core import verification as V  # noqa: E402

PY = get_language("python")


def examples_of(p: Problem) -> tuple[X.Example, ...]:
    """The examples of the problem's docstring, from the file the user would write."""
    fn = next(n for n in ast.parse(p.source).body if isinstance(n, ast.FunctionDef) and n.name == p.entry_point)
    name, found = X.function_examples(ast.get_source_segment(p.source, fn))
    return found if name == p.entry_point else ()


def coverage(problems: list[Problem]) -> dict:
    out: dict = {"problems": len(problems), "with_examples": 0, "examples": 0, "kinds": {k: 0 for k in X.KINDS},
                 "canonical_passes_all": 0, "canonical_examples_passed": 0, "canonical_not_judged": 0,
                 "canonical_failures": []}
    t0 = time.perf_counter()
    for p in problems:
        found = examples_of(p)
        counted = X.checks(found)
        if not counted:
            continue
        out["with_examples"] += 1
        out["examples"] += len(counted)
        for kind, n in V.examples_kinds(found).items():
            out["kinds"][kind] += n
        rep = V.check_body(p.reference, PY, name=p.entry_point, method=False, examples=found)
        out["canonical_examples_passed"] += rep.passed
        if not rep.judged:
            out["canonical_not_judged"] += 1
        if rep.all_passed:
            out["canonical_passes_all"] += 1
        else:
            out["canonical_failures"].append({"task_id": p.task_id, "error": rep.error, "failing": [
                f"{r.example.label}: {r.detail}" for r in rep.results if r.status != V.PASSED]})
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def judge_records(problems: list[Problem], path: Path) -> dict:
    """The applied bodies of a generate_function.py result judged by their examples vs the hidden tests."""
    data = json.loads(path.read_text())
    by_id = {p.task_id: p for p in problems}
    out: dict = {}
    for strategy, recs in (data.get("records") or {}).items():
        row = {"bodies": 0, "with_examples": 0, "examples_pass": 0, "examples_pass_hidden_pass": 0,
               "examples_fail": 0, "examples_fail_hidden_pass": 0, "not_judged": 0, "hidden_pass": 0}
        secs_pass, secs_fail = [], []
        for r in recs:
            p = by_id.get(r["task_id"])
            if p is None or not r.get("applied"):
                continue
            hidden = bool(r["passed"].get("humaneval+", r["passed"].get("mbpp+", False)))
            row["bodies"] += 1
            row["hidden_pass"] += hidden
            found = examples_of(p)
            if not X.checks(found):
                continue
            row["with_examples"] += 1
            line = max(i for i, text in enumerate(p.source.split("\n")) if text == "    pass")
            edited = apply_edit(p.source, {"range": {"start": {"line": line - 1, "character": 10 ** 6},
                                                     "end": {"line": line, "character": 8}},
                                           "newText": r["body"]})
            rep = V.check_body(edited, PY, name=p.entry_point, method=False, examples=found)
            if not rep.judged:
                row["not_judged"] += 1
            elif rep.all_passed:
                row["examples_pass"] += 1
                row["examples_pass_hidden_pass"] += hidden
                secs_pass.append(r["seconds"])
            else:
                row["examples_fail"] += 1
                row["examples_fail_hidden_pass"] += hidden
                secs_fail.append(r["seconds"])
        row["p50_s_examples_pass"] = round(statistics.median(secs_pass), 2) if secs_pass else None
        row["p50_s_examples_fail"] = round(statistics.median(secs_fail), 2) if secs_fail else None
        out[strategy] = row
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--records", default=None, help="a generate_function.py --records result to judge")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    res: dict = {"datasets": {}}
    problems: list[Problem] = []
    for name in args.datasets.split(","):
        ps = _humaneval(None, 0) if name == "humaneval" else _mbppplus(None, 0) if name == "mbppplus" else None
        if ps is None:
            raise SystemExit(f"unknown dataset {name} (choose from {', '.join(DATASETS)})")
        problems += ps
        res["datasets"][name] = coverage(ps)
        for f in res["datasets"][name]["canonical_failures"]:
            print(f"{f['task_id']}: {f['error'] or '; '.join(f['failing'])}", file=sys.stderr)
    if args.records:
        res["records"] = {"file": args.records, "strategies": judge_records(problems, Path(args.records))}
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
