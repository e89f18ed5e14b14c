"""`intarsia.generateFunction` on HumanEval, HumanEval+ and MBPP+, through the served pipeline.

`intarsia serve` runs over stdio with a pygls client, as an editor runs it. For each problem the client opens a
file holding the problem's prompt as a user would write it (signature and docstring, body `pass`), executes the
command `intarsia.generateFunction` at the def line, applies the `workspace/applyEdit` the server sends, and runs
the problem's hidden tests on the edited file in the sandbox (benchmarks/sandbox.py, the server's own). The tests
are never shown to the model nor to verified generation; the documents are opened, never written to disk, so the
workspace holds no other problem as repository context. Strategies are the server setting `generateFunctionMode`,
changed between runs with `workspace/didChangeConfiguration`; one server serves them all. A strategy name ending
in `+verify` (`chat+verify`, `auto+verify`) runs that mode with verified generation on (`generateFunctionVerify`:
the body is judged by the docstring's own examples, more are sampled while it fails them, within
`generateFunctionBudgetS`, which `--settings` may set); the plain names run with it off, as before it existed.

Data (../shared/data, pinned as ANCHORS.md section F says: the versions Qwen's report used):
- humaneval: OpenAI HumanEval (164); "humaneval" = its own `check` tests, "humaneval+" = EvalPlus HumanEval+
  v0.1.9 base + plus inputs, each output compared with the canonical solution's (atol for floats);
- mbppplus: EvalPlus MBPP+ v0.1.0 (399). The file is `def <signature of the canonical solution>:` with the
  task's text and its one example as the docstring; "mbpp" = the task's original asserts, "mbpp+" = base + plus
  inputs against the canonical solution. Inputs on which the canonical solution itself raises are skipped
  (EvalPlus converts some MBPP inputs to tuples per task; this harness passes them as JSON gives them).

Per strategy: pass@1 per score (of the applied body), the share of problems whose body was applied, whose edited
file parses, whose body (or refused answer) was a placeholder, and p50/p95 seconds per body (the command's round
trip). Verified strategies add: problems whose docstring gave examples, bodies that pass them all, bodies sampled
beyond the greedy one (total and mean), bodies applied that were a sample, and how often a body that passes its
examples passes the hidden tests too.

    python benchmarks/generate_function.py --strategies fim,chat,chat+adapter --limit 40 --seed 0
    python benchmarks/generate_function.py --datasets humaneval --strategies chat,chat+verify --out results.json

Prints one JSON object on stdout (and --out FILE); progress and a markdown table on stderr.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import gzip
import json
import logging
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from lsprotocol import types as t
from pygls.lsp.client import LanguageClient
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from sandbox import network_isolated, run_program, writes_confined  # noqa: E402
from lsp_bench import pct, start_server, wait_ready  # noqa: E402

DATA = HERE.parent.parent / "shared" / "data"
HUMANEVAL = DATA / "humaneval" / "HumanEval.jsonl.gz"
HUMANEVAL_PLUS = DATA / "humanevalplus" / "HumanEvalPlus-v0.1.9.jsonl.gz"
MBPP_PLUS = DATA / "mbppplus" / "MbppPlus-v0.1.0.jsonl.gz"
DATASETS = ("humaneval", "mbppplus")
VERIFY_SUFFIX = "+verify"

log = logging.getLogger("generate_function")


@dataclass(frozen=True)
class Problem:
    dataset: str  # humaneval | mbppplus
    task_id: str
    entry_point: str
    source: str  # the file the user wrote: signature + docstring, body `pass`
    base_program: str  # appended to the edited file: the dataset's own tests
    reference: str  # a program defining the canonical solution (differential tests)
    inputs: tuple  # base + plus inputs (argument lists)
    atol: float
    def_line: int  # the 0-based line of `def entry_point`


def _read(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def _def_line(source: str, name: str) -> int:
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node.lineno - 1 if not node.decorator_list else node.decorator_list[0].lineno - 1
    raise ValueError(f"no def {name}")


def _humaneval(limit: Optional[int], seed: int) -> list[Problem]:
    plus = {r["task_id"]: r for r in _read(HUMANEVAL_PLUS)}
    rows = _read(HUMANEVAL)
    random.Random(seed).shuffle(rows)
    out = []
    for r in rows[:limit] if limit else rows:
        p = plus[r["task_id"]]
        source = r["prompt"].rstrip() + "\n    pass\n"
        out.append(Problem("humaneval", r["task_id"], r["entry_point"], source,
                           f"\n\n{r['test']}\n\ncheck({r['entry_point']})\n",
                           p["prompt"] + p["canonical_solution"], tuple(p["base_input"]) + tuple(p["plus_input"]),
                           float(p.get("atol") or 0), _def_line(source, r["entry_point"])))
    return out


def _mbpp_source(row: dict) -> str:
    """`def <signature>:` of the canonical solution, the task's text as the docstring, body `pass`."""
    tree = ast.parse(row["canonical_solution"])
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == row["entry_point"])
    sig = f"def {fn.name}({ast.unparse(fn.args)})" + (f" -> {ast.unparse(fn.returns)}" if fn.returns else "") + ":"
    text = row["prompt"].strip()
    for q in ('"""', "'''"):
        text = text.strip().removeprefix(q).removesuffix(q).strip()
    quote = '"""' if '"""' not in text else "'''"
    doc = "\n".join(("    " + ln) if ln.strip() else "" for ln in text.split("\n"))
    return f"{sig}\n    {quote}\n{doc}\n    {quote}\n    pass\n"


def _mbppplus(limit: Optional[int], seed: int) -> list[Problem]:
    rows = _read(MBPP_PLUS)
    random.Random(seed).shuffle(rows)
    out = []
    for r in rows[:limit] if limit else rows:
        source = _mbpp_source(r)
        out.append(Problem("mbppplus", r["task_id"], r["entry_point"], source, "\n\n" + r["assertion"] + "\n",
                           r["canonical_solution"], tuple(r["base_input"]) + tuple(r["plus_input"]),
                           float(r.get("atol") or 0), _def_line(source, r["entry_point"])))
    return out


DIFFERENTIAL = '''

import copy as _copy, json as _json, math as _math

def _same(a, b, atol):
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, float) or isinstance(b, float):
        if not (isinstance(a, (int, float)) and isinstance(b, (int, float))):
            return False
        if _math.isnan(a) or _math.isnan(b):
            return _math.isnan(a) and _math.isnan(b)
        return _math.isclose(a, b, rel_tol=1e-6, abs_tol=max(atol, 1e-9))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y, atol) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], atol) for k in a)
    return a == b

_ref_ns = {{}}
exec(compile(_json.loads({reference}), "<reference>", "exec"), _ref_ns)
_ref = _ref_ns[{entry!r}]
_cand = {entry}
for _args in _json.loads({inputs}):
    try:
        _want = _ref(*_copy.deepcopy(_args))
    except Exception:
        continue  # the canonical solution rejects this input: it cannot judge it
    _got = _cand(*_copy.deepcopy(_args))
    assert _same(_got, _want, {atol!r}), (_args, _got, _want)
'''


def differential_program(edited: str, p: Problem) -> str:
    return edited + DIFFERENTIAL.format(reference=json.dumps(json.dumps(p.reference)), entry=p.entry_point,
                                        inputs=json.dumps(json.dumps(list(p.inputs))), atol=p.atol)


def utf16_index(text: str, line: int, character: int) -> int:
    """The str index of an LSP position (UTF-16 code units)."""
    starts = [0]
    for i, ch in enumerate(text):
        if ch == "\n":
            starts.append(i + 1)
    if line >= len(starts):
        return len(text)
    i, units = starts[line], 0
    while i < len(text) and text[i] != "\n" and units < character:
        units += 2 if ord(text[i]) > 0xFFFF else 1
        i += 1
    return i


def apply_edit(text: str, edit: dict) -> str:
    r = edit["range"]
    a = utf16_index(text, r["start"]["line"], r["start"]["character"])
    b = utf16_index(text, r["end"]["line"], r["end"]["character"])
    return text[:a] + edit["newText"] + text[b:]


@dataclass
class Record:
    task_id: str
    dataset: str
    applied: bool = False
    parses: bool = False
    placeholder: bool = False
    seconds: float = 0.0
    strategy: str = ""
    reason: str = ""
    passed: dict = field(default_factory=dict)  # score name -> bool
    body: str = ""
    verification: Optional[dict] = None  # the command's report on the docstring's examples (verified strategies)


def parse_strategy(name: str) -> tuple[str, bool]:
    """(generateFunctionMode, generateFunctionVerify) of a strategy name ("chat+verify" -> ("chat", True))."""
    if name.endswith(VERIFY_SUFFIX):
        return name[:-len(VERIFY_SUFFIX)], True
    return name, False


def strategy_settings(name: str) -> dict:
    """The server settings of a strategy name: its mode and whether verification is on."""
    mode, verify = parse_strategy(name)
    return {"generateFunctionMode": mode, "generateFunctionVerify": verify}


def select_tasks(problems: list[Problem], tasks: Optional[str]) -> list[Problem]:
    """The problems named by `--tasks` (comma-separated task ids, or @FILE with one per line), in their order."""
    if not tasks:
        return problems
    names = Path(tasks[1:]).read_text().split() if tasks.startswith("@") else tasks.split(",")
    wanted = {n.strip() for n in names if n.strip()}
    unknown = wanted - {p.task_id for p in problems}
    if unknown:
        raise SystemExit(f"--tasks names tasks not in the chosen datasets: {', '.join(sorted(unknown))}")
    return [p for p in problems if p.task_id in wanted]


def score(p: Problem, edited: Optional[str], timeout: float) -> dict[str, bool]:
    names = ("humaneval", "humaneval+") if p.dataset == "humaneval" else ("mbpp", "mbpp+")
    if edited is None:
        return {n: False for n in names}
    base = run_program(edited + p.base_program, timeout=timeout)
    plus = run_program(differential_program(edited, p), timeout=4 * timeout) if base.passed else None
    return {names[0]: base.passed, names[1]: bool(plus and plus.passed)}


async def run(args: argparse.Namespace) -> dict:
    from intarsia.grammars.registry import get_language
    from intarsia.server.core.function_prompts import is_placeholder_body

    py = get_language("python")
    problems: list[Problem] = []
    for name in args.datasets.split(","):
        if name == "humaneval":
            problems += _humaneval(args.limit, args.seed)
        elif name == "mbppplus":
            problems += _mbppplus(args.limit, args.seed)
        else:
            raise SystemExit(f"unknown dataset {name} (choose from {', '.join(DATASETS)})")
    # A problem's file name is its place in the whole list, so that --tasks asks what a full run asks (the path is
    # part of the prompt).
    place = {id(p): k for k, p in enumerate(problems)}
    problems = select_tasks(problems, args.tasks)
    strategies = args.strategies.split(",")
    ws = Path(tempfile.mkdtemp(prefix="intarsia-genfn-"))
    log_file = ws.parent / (ws.name + ".log")
    settings = {"engine": "ort", "acceptanceLog": False, "prewarm": False, "speculate": False,
                **json.loads(args.settings)}
    if args.model:
        settings["model"] = args.model
    client = LanguageClient("intarsia-generate-function-bench", "1")
    edits: list[t.ApplyWorkspaceEditParams] = []

    @client.feature(t.WORKSPACE_APPLY_EDIT)
    def on_apply_edit(params: t.ApplyWorkspaceEditParams) -> t.ApplyWorkspaceEditResult:
        edits.append(params)
        return t.ApplyWorkspaceEditResult(applied=True)

    @client.feature(t.WINDOW_SHOW_MESSAGE)
    def on_show_message(params: t.ShowMessageParams) -> None:
        log.debug("server says: %s", params.message)  # (the command's result carries the same verification)

    await start_server(client, ws, log_file, {**settings, **strategy_settings(strategies[0])},
                       tree=args.server_tree, capabilities=t.ClientCapabilities(
                           general=t.GeneralClientCapabilities(position_encodings=[t.PositionEncodingKind.Utf16]),
                           workspace=t.WorkspaceClientCapabilities(
                               apply_edit=True,
                               workspace_edit=t.WorkspaceEditClientCapabilities(document_changes=True)),
                           text_document=t.TextDocumentClientCapabilities(
                               synchronization=t.TextDocumentSyncClientCapabilities())))

    async def execute(name: str, *a):
        return await client.workspace_execute_command_async(t.ExecuteCommandParams(command=name, arguments=list(a)))

    load_s, st = await wait_ready(client, log_file)
    description = st.get("model")

    results: dict[str, dict] = {}
    records: dict[str, list[Record]] = {}
    for strategy in strategies:
        wanted = {**settings, **strategy_settings(strategy)}
        client.workspace_did_change_configuration(t.DidChangeConfigurationParams(settings={"intarsia": wanted}))
        st = await execute("intarsia.status")
        differ = {k: v for k, v in strategy_settings(strategy).items() if st["settings"].get(k) != v}
        if differ:
            raise SystemExit(f"the server did not take {differ}: {st['settings']}")
        recs: list[Record] = []
        for p in tqdm(problems, desc=strategy, file=sys.stderr, unit="fn"):
            uri = (ws / strategy.replace("+", "_") / f"{p.dataset}_{place[id(p)]}.py").as_uri()
            client.text_document_did_open(t.DidOpenTextDocumentParams(text_document=t.TextDocumentItem(
                uri=uri, language_id="python", version=1, text=p.source)))
            edits.clear()
            s = time.perf_counter()
            res = await execute("intarsia.generateFunction", {"uri": uri, "position": {"line": p.def_line,
                                                                                        "character": 4}})
            rec = Record(p.task_id, p.dataset, seconds=time.perf_counter() - s, reason=res.get("reason", ""),
                         strategy=res.get("strategy", ""), verification=res.get("verification"))
            client.text_document_did_close(t.DidCloseTextDocumentParams(
                text_document=t.TextDocumentIdentifier(uri=uri)))
            edited = None
            if res.get("applied") and edits:
                (dc,) = edits[0].edit.document_changes
                (e,) = dc.edits
                edited = apply_edit(p.source, {"range": {
                    "start": {"line": e.range.start.line, "character": e.range.start.character},
                    "end": {"line": e.range.end.line, "character": e.range.end.character}}, "newText": e.new_text})
                rec.applied = True
                rec.body = e.new_text
            placeholder_refused = any("placeholder" in a for a in res.get("attempts", []))
            rec.placeholder = placeholder_refused or bool(rec.body and is_placeholder_body(rec.body.strip(), py))
            if edited is not None:
                try:
                    ast.parse(edited)
                    rec.parses = True
                except SyntaxError:
                    rec.parses = False
            rec.passed = score(p, edited if rec.parses else None, args.timeout)
            recs.append(rec)
        records[strategy] = recs
        results[strategy] = summarize(recs)
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    return {
        "label": args.label, "model": args.model or "default", "model_description": description,
        "server_tree": args.server_tree, "settings": settings, "datasets": args.datasets, "limit": args.limit,
        "tasks": args.tasks, "seed": args.seed, "problems": len(problems), "engine_load_s": round(load_s, 1),
        "data": {"humaneval": HUMANEVAL.name, "humaneval+": HUMANEVAL_PLUS.name, "mbpp+": MBPP_PLUS.name},
        "sandbox_network_isolated": network_isolated(), "sandbox_writes_confined": writes_confined(),
        "strategies": results,
        "records": {s: [r.__dict__ for r in rs] for s, rs in records.items()} if args.records else None,
        "log": str(log_file),
    }


def summarize(recs: list[Record]) -> dict:
    n = len(recs)
    out: dict = {"n": n}
    for name in ("humaneval", "humaneval+", "mbpp", "mbpp+"):
        scored = [r.passed[name] for r in recs if name in r.passed]
        if scored:
            out[f"pass@1 {name}"] = round(100 * sum(scored) / len(scored), 1)
            out[f"n {name}"] = len(scored)
    out["applied"] = round(sum(r.applied for r in recs) / n, 3) if n else None
    out["parses"] = round(sum(r.parses for r in recs) / n, 3) if n else None
    out["placeholder"] = round(sum(r.placeholder for r in recs) / n, 3) if n else None
    secs = [r.seconds for r in recs]
    out["p50_s"], out["p95_s"] = pct(secs, 0.5, 1, 2), pct(secs, 0.95, 1, 2)
    out["mean_s"] = round(statistics.mean(secs), 2) if secs else None
    used: dict[str, int] = {}
    for r in recs:
        if r.applied:
            used[r.strategy] = used.get(r.strategy, 0) + 1
    out["bodies_by_strategy"] = used
    checked = [r for r in recs if r.verification]
    if checked:
        verified = [r for r in checked if r.verification["verified"]]
        sampled = [r.verification.get("sampled", 0) for r in checked]
        out["with_examples"] = len(checked)
        out["examples_pass"] = len(verified)
        out["sampled_total"] = sum(sampled)
        out["sampled_mean"] = round(statistics.mean(sampled), 2)
        out["sample_applied"] = sum(r.verification["chosen"] > 0 for r in checked)
        out["examples_pass_then_hidden_pass"] = round(
            sum(r.passed.get("humaneval+", r.passed.get("mbpp+", False)) for r in verified) / len(verified), 3) \
            if verified else None
    return out


def table(res: dict) -> str:
    cols = ["pass@1 humaneval", "pass@1 humaneval+", "pass@1 mbpp", "pass@1 mbpp+", "applied", "parses",
            "placeholder", "p50_s", "p95_s", "with_examples", "examples_pass", "sampled_total", "sample_applied"]
    lines = ["| strategy | " + " | ".join(c.replace("pass@1 ", "") for c in cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    for s, r in res["strategies"].items():
        lines.append(f"| {s} | " + " | ".join(str(r.get(c, "-")) for c in cols) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--strategies", default="fim,chat,chat+adapter",
                    help="generateFunctionMode values, run one after the other (auto, fim, chat, chat+adapter); "
                         "with +verify (chat+verify): verified generation on")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--limit", type=int, default=None, help="problems per dataset (a seeded shuffle's first N)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tasks", default=None,
                    help="only these task ids (comma-separated, or @FILE with one per line), after --limit")
    ap.add_argument("--model", default=None)
    ap.add_argument("--settings", default="{}", help="extra server settings (JSON)")
    ap.add_argument("--server-tree", default=None, help="run the server from this checkout (lsp_bench.py)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds for a problem's own tests (x4: plus)")
    ap.add_argument("--records", action="store_true", help="include every problem's record in the JSON")
    ap.add_argument("--label", default="generate_function")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    logging.getLogger("pygls").setLevel(logging.WARNING)  # its INFO is every JSON-RPC message sent
    res = asyncio.run(run(args))
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(table(res), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
