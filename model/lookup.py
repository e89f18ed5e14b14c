"""Prompt-lookup decoding: draft the next tokens from the text itself, verify them in one forward pass.

Code completion copies a lot: a name defined above, the rest of a call that the suffix already shows, the
second half of a symmetric statement. Greedy prompt-lookup decoding takes the last n tokens of prompt + output
(n = 3, 2, 1), finds their latest earlier occurrence and drafts the tokens that followed it. One forward pass
over [next token] + draft gives the model's greedy choice after every drafted position; the drafted tokens up
to the first disagreement are accepted, plus the model's own token at that position. The output is the greedy
output: only the number of forward passes changes. On a CPU a decode pass is bound by reading the weights, so
a pass over four tokens costs little more than one.

Two parts live here, both free of the engine:
- `add_draft_logits` changes a decoder graph exported by the onnxruntime-genai builder so that it returns
  logits for the last few positions of each call (the builder's `prune_lm_head` keeps only the last one,
  onnxruntime-genai needs the logits tensor to be [batch, 1, vocab] or [batch, sequence, vocab]): the LM head
  runs on the last `rows` hidden states when a call has at most `rows` tokens (a verification pass) and on the
  last one otherwise (a prefill chunk), and the result is padded with zeros at the front to the call's length.
- `PromptLookup`, the drafter: an index of every n-gram of the context to the position after its latest
  occurrence, updated token by token.
- `LookupDecoder`, the greedy token loop over any runtime that can run tokens and return their logits and
  rewind its cache (the ONNX Runtime engine; the llama.cpp peer in benchmarks/ uses the same one).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from .cache import atomic_path
from .errors import BuildError

log = logging.getLogger(__name__)

# Positions the changed graph returns logits for: one pass verifies up to DRAFT_ROWS - 1 drafted tokens.
DRAFT_ROWS = 8
# The longest n-gram the drafter matches (then shorter ones).
MAX_NGRAM = 3
# Tokens drafted per pass by default (after a MAX_NGRAM match). Measured on the 0.5B model on a 2-core CPU: each
# drafted token adds ~15 % to a pass, and drafts beyond 3 tokens are rarely all accepted.
DEFAULT_DRAFT = 3

_NODE_PREFIX = "/lm_head/draft_rows/"
_LOGITS = "logits"


# --------------------------------------------------------------------------------------------------------------
# The graph
# --------------------------------------------------------------------------------------------------------------


def _dim(d) -> Optional[object]:
    if d.HasField("dim_value"):
        return d.dim_value
    if d.HasField("dim_param"):
        return d.dim_param
    return None


def logits_rows(proto) -> Optional[int]:
    """How many positions a decoder graph returns logits for in one call: 1 (a pruned LM head), the graph's
    draft rows (`add_draft_logits`), or None (every position of the call)."""
    for node in proto.graph.node:
        if node.name == _NODE_PREFIX + "Rows":
            for a in node.attribute:
                if a.name == "value":
                    from onnx import numpy_helper

                    return int(numpy_helper.to_array(a.t).reshape(-1)[0])
    for out in proto.graph.output:
        if out.name == _LOGITS:
            dims = [_dim(d) for d in out.type.tensor_type.shape.dim]
            if len(dims) == 3 and dims[1] == 1:
                return 1
            return None
    return None


def add_draft_logits(model_path: Path, rows: int = DRAFT_ROWS) -> Optional[int]:
    """Let the decoder graph at `model_path` return logits for the last `rows` positions of a call, in place
    (atomic rewrite of the graph file; the external weight file is not touched). Idempotent. Returns `rows`.

    The graph must come from the onnxruntime-genai builder with `prune_lm_head` (a Gather of the last hidden
    state feeding the LM head); a graph that already returns every position's logits is left alone (returns
    None, as `logits_rows` does).
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    if not isinstance(rows, int) or rows < 2:
        raise BuildError(f"draft rows must be an integer >= 2, got {rows!r}")
    model_path = Path(model_path)
    try:
        proto = onnx.load(str(model_path), load_external_data=False)
    except Exception as e:  # protobuf raises assorted errors on damaged files
        raise BuildError(f"cannot parse {model_path} as an ONNX model ({type(e).__name__})") from None
    graph = proto.graph
    current = logits_rows(proto)
    if current is None:
        log.info("%s already returns logits for every position", model_path)
        return None
    if current == rows:
        return rows
    if current != 1:
        raise BuildError(f"{model_path} returns logits for {current} positions already; rebuild it for {rows}")

    producer = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    if _LOGITS not in producer:
        raise BuildError(f"{model_path}: no node produces '{_LOGITS}'")
    # Walk up from the logits to the builder's prune: Gather(hidden, -1, axis=1) -> Unsqueeze(axis 1).
    gather = unsqueeze = None
    seen = set()
    queue = [producer[_LOGITS]]
    while queue:
        idx = queue.pop()
        if idx in seen:
            continue
        seen.add(idx)
        node = graph.node[idx]
        if node.op_type == "Gather" and "prune" in node.name:
            gather = idx
            break
        if node.op_type == "Unsqueeze" and "prune" in node.name:
            unsqueeze = idx
        queue.extend(producer[i] for i in node.input if i in producer)
    if gather is None or unsqueeze is None:
        raise BuildError(f"{model_path}: the LM head is not pruned the builder's way (no prune Gather/Unsqueeze)")
    hidden = graph.node[gather].input[0]
    pruned = graph.node[unsqueeze].output[0]

    p = _NODE_PREFIX

    def node(op: str, name: str, inputs: Sequence[str], **attrs):
        out = f"{p}{name}/output_0"
        new.append(helper.make_node(op, list(inputs), [out], name=p + name, **attrs))
        return out

    def const(name: str, value) -> str:
        arr = np.asarray(value, dtype=np.int64)
        return node("Constant", name, [], value=numpy_helper.from_array(arr, p + name + "/value"))

    new: list = []
    k_max = const("Rows", [rows])
    one = const("One", [1])
    zero = const("Zero", [0])
    big = const("End", [np.iinfo(np.int64).max])
    axis1 = const("Axis1", [1])
    n = node("Shape", "Shape", [hidden], start=1, end=2)  # tokens in this call, [1]
    verify = node("LessOrEqual", "IsVerify", [n, k_max])
    k = node("Where", "Take", [verify, n, one])  # rows to compute: all of a short call, else the last
    start = node("Neg", "Start", [k])
    sliced = node("Slice", "Slice", [hidden, start, big, axis1])
    # The LM head: the node(s) that consumed the pruned hidden state now consume the sliced one.
    consumers = [i for i, nd in enumerate(graph.node) if pruned in nd.input]
    for i in consumers:
        nd = graph.node[i]
        for j, name in enumerate(nd.input):
            if name == pruned:
                nd.input[j] = sliced
    # Pad the logits at the front to the call's length: [0, n - k, 0] before, zeros after.
    head_out = f"{p}head_logits"
    logits_node = graph.node[producer[_LOGITS]]
    for j, name in enumerate(logits_node.output):
        if name == _LOGITS:
            logits_node.output[j] = head_out
    before = node("Sub", "PadBefore", [n, k])
    pads = node("Concat", "Pads", [zero, before, zero, zero, zero, zero], axis=0)
    logits_vi = next(o for o in graph.output if o.name == _LOGITS)
    elem = logits_vi.type.tensor_type.elem_type
    pad_value = node(
        "Constant", "PadValue", [],
        value=helper.make_tensor(p + "PadValue/value", elem, [], [0.0]),
    )
    tail = [helper.make_node("Pad", [head_out, pads, pad_value], [_LOGITS], name=p + "Pad", mode="constant")]

    # Order: the new shape/slice nodes right after the prune's Unsqueeze; the pad at the end.
    # The prune's Gather and Unsqueeze are dead now: they are dropped.
    kept = []
    for i, nd in enumerate(graph.node):
        if i == unsqueeze:
            kept.extend(new)
        elif i != gather:
            kept.append(nd)
    kept.extend(tail)
    del graph.node[:]
    graph.node.extend(kept)
    dims = logits_vi.type.tensor_type.shape.dim
    dims[1].Clear()
    dims[1].dim_param = "sequence_length"
    data = proto.SerializeToString()
    with atomic_path(model_path) as tmp:
        tmp.write_bytes(data)
    log.info("%s: logits for the last %d positions of a call", model_path, rows)
    return rows


# --------------------------------------------------------------------------------------------------------------
# The drafter
# --------------------------------------------------------------------------------------------------------------


class PromptLookup:
    """Drafts tokens by n-gram lookup in the context (prompt + generated so far).

    `follow[n-gram]` is the position right after the n-gram's latest occurrence that is followed by a token, so
    the context's own tail (not followed yet) never matches itself. `draft(k)` tries n = MAX_NGRAM down to 1.
    Tokens in `stop_ids` (end tokens) end a draft: they are never verified as drafts.
    """

    def __init__(self, context: Iterable[int] = (), *, max_ngram: int = MAX_NGRAM, stop_ids: Iterable[int] = ()):
        if max_ngram < 1:
            raise ValueError("max_ngram must be >= 1")
        self.max_ngram = max_ngram
        self.stop_ids = frozenset(int(t) for t in stop_ids)
        self.tokens: list[int] = []
        self._follow: dict[tuple[int, ...], int] = {}
        self.extend(context)

    def __len__(self) -> int:
        return len(self.tokens)

    def append(self, token: int) -> None:
        toks = self.tokens
        toks.append(int(token))
        end = len(toks) - 1  # the new token's position: it follows the n-grams ending at end - 1
        follow = self._follow
        for n in range(1, self.max_ngram + 1):
            if end - n < 0:
                break
            follow[tuple(toks[end - n:end])] = end

    def extend(self, tokens: Iterable[int]) -> None:
        for t in tokens:
            self.append(t)

    def draft(self, k: int) -> list[int]:
        """Up to `k` tokens that followed the latest earlier occurrence of the context's last n-gram; a match shorter
        than `max_ngram` drafts at most n tokens. A longer match predicts further: on recorded HumanEval
        completions, drafting 1 token after a 1-gram match and 2 after a 2-gram one beat a fixed draft length on
        every set (benchmarks/lookup_headroom.py)."""
        toks = self.tokens
        if k <= 0:
            return []
        for n in range(min(self.max_ngram, len(toks) - 1), 0, -1):
            pos = self._follow.get(tuple(toks[-n:]))
            if pos is None:
                continue
            out = []
            for t in toks[pos:pos + (k if n == self.max_ngram else min(k, n))]:
                if t in self.stop_ids:
                    break
                out.append(t)
            return out
        return []


class LookupDecoder:
    """Greedy decoding with prompt-lookup drafts over a runtime given as three callables.

    - `first_logits()`: the logits after the prompt (the prefill has run);
    - `run(tokens)`: append `tokens` to the cache and return their logits, one row per token;
    - `rewind(n)`: keep the first `n` tokens of the cache.

    `next_token` returns one token per call and runs at most one forward pass: tokens accepted by the last pass
    are queued and returned without running the model. A pass appends the pending token (chosen, not yet in the
    cache) plus a draft, accepts the drafted tokens the model agrees with plus its own choice after them, and
    rewinds over the rejected rest, so the cache holds exactly the accepted tokens (the next request's prefix
    reuse sees a consistent sequence). No token is ever produced beyond `max_new`.
    """

    def __init__(
        self,
        first_logits: Callable[[], np.ndarray],
        run: Callable[[list[int]], np.ndarray],
        rewind: Callable[[int], None],
        prompt: Sequence[int],
        draft: int,
        max_new: int,
        stop_ids: Iterable[int] = (),
    ):
        self._first_logits, self._run, self._rewind = first_logits, run, rewind
        self._draft = max(int(draft), 0)
        self._max_new = max_new
        self._ctx = PromptLookup(prompt, stop_ids=stop_ids)
        self._cached = len(prompt)  # tokens in the cache
        self._pending: Optional[int] = None
        self._queue: list[int] = []
        self._produced = 0
        self.passes = self.drafted = self.accepted = 0

    def next_token(self) -> int:
        if self._queue:
            self._produced += 1
            return self._queue.pop(0)
        if self._pending is None:
            toks = [int(np.argmax(np.asarray(self._first_logits()).reshape(-1)))]
        else:
            # Tokens after this pass's first one must fit the request: never verify beyond max_new.
            room = self._max_new - self._produced - 1
            draft = self._ctx.draft(min(self._draft, room)) if room > 0 else []
            rows = np.asarray(self._run([self._pending, *draft]))
            preds = rows.reshape(len(draft) + 1, -1).argmax(axis=-1)
            i = 0
            while i < len(draft) and int(preds[i]) == draft[i]:
                i += 1
            self.passes += 1
            self.drafted += len(draft)
            self.accepted += i
            self._cached += 1 + i
            if i < len(draft):
                self._rewind(self._cached)
            toks = [*draft[:i], int(preds[i])]
        self._ctx.extend(toks)
        self._pending = toks[-1]
        self._queue = toks[1:]
        self._produced += 1
        return toks[0]

    def stats(self) -> dict:
        return {"lookup_passes": self.passes, "lookup_drafted": self.drafted, "lookup_accepted": self.accepted}
