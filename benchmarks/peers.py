"""Peers measured side by side with our engines: llama.cpp (llama-cpp-python) on the same GGUF.

`LlamaCppEngine` implements the project's `Engine` interface over llama-cpp-python so that the benchmark
scripts drive every engine the same way (same prompt string, greedy, same stop strings, same timings).
With `lookup_draft > 0` it decodes with the same prompt-lookup drafts and acceptance as our ORT engine
(`intarsia.model.lookup.LookupDecoder`): a verification pass is one llama.cpp batch with logits for each of
its tokens, and a rejected draft is removed from llama.cpp's KV cache. (llama-cpp-python's own
`LlamaPromptLookupDecoding` needs `logits_all=True`, which computes logits for every prompt token too and would
slow its prefill; this keeps llama.cpp's prefill as it is.)
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np

from intarsia.model.engine import (
    FINISH_CANCELLED,
    FINISH_EOS,
    FINISH_LENGTH,
    FINISH_STOP,
    Engine,
    GenerationRequest,
    GenerationResult,
    StopMatcher,
    Timings,
)


def llama_cpp_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


class LlamaCppEngine(Engine):
    name = "llama.cpp"

    def __init__(self, gguf: Path, *, threads: int = 2, n_ctx: int = 4096, lookup_draft: int = 0):
        import llama_cpp

        self.lookup_draft = lookup_draft
        self.llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                                   n_batch=512, verbose=False, logits_all=False)
        self._eos = {self.llm.token_eos()}
        for t in ("<|endoftext|>", "<|im_end|>"):
            ids = self.llm.tokenize(t.encode(), add_bos=False, special=True)
            if len(ids) == 1:
                self._eos.add(ids[0])

    def encode(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def generate(self, request: GenerationRequest, *, cancel: Optional[threading.Event] = None,
                 on_text=None) -> GenerationResult:
        llm = self.llm
        t0 = time.perf_counter()
        tokens = self.encode(request.prompt)
        # llama.cpp keeps the previous evaluation and re-evaluates only the differing suffix (its own prefix
        # reuse), which we count the same way as ours. `input_ids[:n_tokens]` is what its KV cache holds.
        cached = llm.input_ids[: llm.n_tokens].tolist()
        common = 0
        for a, b in zip(cached, tokens):
            if a != b:
                break
            common += 1
        common = min(common, len(tokens) - 1)
        llm.n_tokens = common
        llm.eval(tokens[common:])
        t_first = None
        out_ids: list[int] = []
        matcher = StopMatcher(request.stop)
        finish = FINISH_LENGTH
        detok_prev = b""
        lookup = None
        if self.lookup_draft > 0:
            from intarsia.model.lookup import LookupDecoder

            n_vocab = llm.n_vocab()

            def run(batch: list[int]) -> np.ndarray:
                n_past = llm.n_tokens
                llm._ctx.kv_cache_seq_rm(-1, n_past, -1)
                llm._batch.set_batch(batch=batch, n_past=n_past, logits_all=True)
                llm._ctx.decode(llm._batch)
                llm.input_ids[n_past:n_past + len(batch)] = batch
                llm.n_tokens += len(batch)
                return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(len(batch), n_vocab)).copy()

            def rewind(n: int) -> None:
                llm.n_tokens = n
                llm._ctx.kv_cache_seq_rm(-1, n, -1)

            lookup = LookupDecoder(
                lambda: np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,)).copy(), run, rewind,
                tokens, self.lookup_draft, request.max_new_tokens, () if request.ignore_eos else self._eos,
            )
        for i in range(request.max_new_tokens):
            if lookup is None and i > 0:
                llm.eval([out_ids[-1]])  # only when another token is wanted
            if cancel is not None and cancel.is_set():
                finish = FINISH_CANCELLED
                break
            tok = lookup.next_token() if lookup is not None else llm.sample(top_k=1, temp=0.0)
            if t_first is None:
                t_first = time.perf_counter()
            out_ids.append(tok)
            if tok in self._eos and not request.ignore_eos:
                finish = FINISH_EOS
                break
            full = llm.detokenize(out_ids, special=True)
            piece = full[len(detok_prev):].decode("utf-8", errors="ignore") if not full.endswith(b"\xef\xbf\xbd") else ""
            if piece:
                detok_prev = full
                emitted = matcher.feed(piece)
                if emitted and on_text:
                    on_text(emitted)
                if matcher.stopped and not request.ignore_eos:
                    finish = FINISH_STOP
                    break
        if finish != FINISH_STOP:
            rest = matcher.flush()
            if rest and on_text:
                on_text(rest)
        end = time.perf_counter()
        first = (t_first or end) - t0
        timings = Timings(prompt_tokens=len(tokens), reused_tokens=common, new_tokens=len(out_ids),
                          first_token_s=first, prefill_s=first, decode_s=max(end - (t_first or end), 0.0),
                          total_s=end - t0)
        return GenerationResult(text=matcher.text, token_ids=tuple(out_ids), finish_reason=finish, timings=timings,
                                extra=lookup.stats() if lookup is not None else {})

    def close(self) -> None:
        if hasattr(self.llm, "close"):
            self.llm.close()
