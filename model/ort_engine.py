"""The ONNX Runtime engine: onnxruntime-genai with KV-cache reuse across requests.

Completion requests arrive one keystroke apart, and consecutive prompts share almost all of their tokens.
`OrtEngine` keeps the generator of the previous request; a new request is tokenized, the longest common token
prefix with the tokens already in the cache (the previous prompt plus what was generated after it) is kept
(`rewind_to`), and only the rest of the prompt is run. The output is token-identical to a cold run: the
reused keys and values are exactly those a cold run would compute for the same tokens.

The generator is rebuilt (cold) when the adapter changes, or when the prompt plus `max_new_tokens` does not fit
the generator's KV buffer (which grows up to the model's context length).

What it shares with the transformers engine (request checks, the token loop, error handling) is
`model.decoding`'s `LocalEngine`; this module is only what onnxruntime-genai needs: the generator and its
cache, prefill chunks, prompt-lookup drafts, and adapters loaded at run time.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from .chat import read_chat_template
from .decoding import HfTokenizerFile, LocalEngine, PreparedRequest, first_line, sample_token
from .kv_slots import Slot, SlotPool
from .engine import BASE_ADAPTER, FINISH_CANCELLED, GenerationResult
from .errors import EngineError, ModelNotFoundError
from .lookup import DEFAULT_DRAFT, LookupDecoder, logits_rows
from .trust import check_onnx_folder

log = logging.getLogger(__name__)

# Graph inputs of a decoder exported by the onnxruntime-genai builder that are not LoRA parameters.
_STANDARD_INPUT_PREFIXES = ("input_ids", "attention_mask", "position_ids", "past_key_values.", "past_", "cache_")


# --------------------------------------------------------------------------------------------------------------
# Providers
# --------------------------------------------------------------------------------------------------------------


def _import_og():
    try:
        import onnxruntime_genai as og
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise EngineError(f"onnxruntime-genai is not installed or cannot be loaded ({e})") from None
    return og


def available_providers() -> list[str]:
    """Execution providers OrtEngine can use here: always "cpu", "cuda" when both onnxruntime-genai and
    onnxruntime were built with CUDA and a device is visible."""
    providers = ["cpu"]
    try:
        og = _import_og()
        import onnxruntime

        if og.is_cuda_available() and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.append("cuda")
    except Exception as e:  # a broken CUDA install must not break CPU use
        log.debug("CUDA provider check failed: %s", e)
    return providers


def default_threads() -> int:
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # pragma: no cover - not Linux
        return max(os.cpu_count() or 1, 1)


# --------------------------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------------------------


class OrtEngine(LocalEngine):
    """onnxruntime-genai engine with KV prefix reuse, streaming, stop strings, cancel and LoRA adapters.

    `model_dir` is a folder written by the onnxruntime-genai model builder (genai_config.json, the decoder ONNX
    file, tokenizer files). `provider`: "cpu", "cuda", or "auto" (CUDA when available). `threads`: intra-op
    threads for the CPU provider (default: the cores this process may run on). `max_length`: initial size of
    the KV buffer in tokens (default min(context length, 4096)); it grows up to the context length when a
    request needs more. `prefill_chunk`: prompt tokens run per forward pass, with a cancel check between
    chunks (default 64 on CPU and 512 on CUDA). onnxruntime-genai 0.18 holds Python's GIL for the whole of
    each forward pass, so a chunk is also how long the server's event loop (other requests, cache answers,
    cancellations) may have to wait: on two cores 64 tokens are ~0.6 s at the same prefill throughput as 128
    (measured 105 and 103 tokens/s; 32: 91, 16: 82). The chunks of a cancelled prefill stay in the cache and
    are reused by the next request. `eos_token_ids`: tokens that end a generation (default: genai_config.json's
    eos_token_id).
    `adapters` (name → .onnx_adapter file) are loaded at start; `default_adapter` is used by requests whose
    `adapter` is None (BASE_ADAPTER, "", selects the base model explicitly).
    `lookup_draft`: tokens drafted per forward pass by prompt-lookup decoding for greedy requests (`model.lookup`;
    default DEFAULT_DRAFT, 0 turns it off). It needs a graph that returns logits for several positions (built
    models have it); with a graph whose LM head is pruned to one position it is off.
    """

    name = "ort"
    can_load_adapters = True
    _engine_label = "ONNX"
    _runtime_label = "ONNX Runtime"

    def __init__(
        self,
        model_dir: Path | str,
        *,
        provider: str = "auto",
        threads: Optional[int] = None,
        adapters: Optional[Mapping[str, Path | str]] = None,
        default_adapter: Optional[str] = None,
        max_length: Optional[int] = None,
        prefill_chunk: Optional[int] = None,
        eos_token_ids: Optional[Sequence[int]] = None,
        seed: Optional[int] = None,
        lookup_draft: Optional[int] = None,
        kv_slots: int = 1,
        kv_cache_mb: Optional[int] = None,
    ):
        super().__init__()
        self.model_dir = Path(model_dir)
        cfg_path = self.model_dir / "genai_config.json"
        if not cfg_path.is_file():
            raise ModelNotFoundError(f"no ONNX model in {self.model_dir} (genai_config.json is missing)")
        try:
            self._genai_config = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise EngineError(f"cannot read {cfg_path}: {e}") from None
        # The choke point before onnxruntime-genai reads the folder: a genai_config.json that names a library
        # (custom_ops_library, a provider's plugin) would run that library's code here (model.trust).
        check_onnx_folder(self.model_dir)
        model_cfg = self._genai_config.get("model", {})
        if provider not in ("auto", "cpu", "cuda"):
            raise EngineError(f"unknown provider '{provider}' (choose auto, cpu or cuda)")
        avail = available_providers()
        if provider == "auto":
            provider = "cuda" if "cuda" in avail else "cpu"
        elif provider == "cuda" and "cuda" not in avail:
            raise EngineError(
                "the CUDA provider is not available (install onnxruntime-gpu and onnxruntime-genai-cuda)"
            )
        self.provider = provider
        self.threads = int(threads) if threads else default_threads()
        self.context_length = int(
            model_cfg.get("context_length") or self._genai_config.get("search", {}).get("max_length") or 4096
        )
        self.max_length = min(int(max_length or 4096), self.context_length)
        self.prefill_chunk = max(int(prefill_chunk or (512 if provider == "cuda" else 64)), 1)
        eos = eos_token_ids if eos_token_ids is not None else model_cfg.get("eos_token_id", [])
        self.eos_token_ids: tuple[int, ...] = tuple(int(e) for e in ([eos] if isinstance(eos, int) else eos))
        self._decoder_file = self.model_dir / model_cfg.get("decoder", {}).get("filename", "model.onnx")
        if lookup_draft is not None and (not isinstance(lookup_draft, int) or lookup_draft < 0):
            raise EngineError(f"lookup_draft must be a non-negative integer, not {lookup_draft!r}")
        self._graph_proto = None
        rows = self._logits_rows()
        # Drafted tokens one pass can verify: rows - 1 (None: the graph returns every position's logits).
        self.max_draft = None if rows is None else rows - 1
        want = DEFAULT_DRAFT if lookup_draft is None else lookup_draft
        self.lookup_draft = want if self.max_draft is None else min(want, self.max_draft)
        self._rng = np.random.default_rng(seed)

        og = _import_og()
        self._og = og
        try:
            config = og.Config(str(self.model_dir))
            config.clear_providers()
            if provider == "cuda":
                config.append_provider("cuda")
            else:
                # The default pool may use fewer threads than cores; set the count explicitly.
                config.overlay(
                    json.dumps(
                        {"model": {"decoder": {"session_options": {"intra_op_num_threads": self.threads}}}}
                    )
                )
            self._model = og.Model(config)
        except Exception as e:
            raise EngineError(f"cannot load the ONNX model in {self.model_dir}: {first_line(e)}") from None
        tok_file = self.model_dir / "tokenizer.json"
        if tok_file.is_file():
            self._tok = HfTokenizerFile(tok_file)
        else:
            self._tok = _OgTokenizer(og.Tokenizer(self._model))
        self._chat_template = read_chat_template(self.model_dir)
        log.info(
            "loaded %s on %s (%s threads, context %d)",
            self.model_dir,
            self.provider,
            self.threads if provider == "cpu" else "-",
            self.context_length,
        )

        # KV caches by recency (model/kv_slots.py); `kv_cache_mb` bounds their KV memory (one slot always fits).
        self.kv_bytes_per_token = _kv_bytes_per_token(model_cfg, provider)
        self._slots = SlotPool(kv_slots, bytes_per_token=self.kv_bytes_per_token,
                               budget_bytes=None if kv_cache_mb is None else int(kv_cache_mb) << 20)
        self._slot: Optional[Slot] = None  # the slot the running request uses
        self._adapters = None  # og.Adapters, created on the first load
        self._adapter_paths: dict[str, Path] = {}
        self._lora_inputs: Optional[dict[str, tuple[str, tuple[Optional[int], ...]]]] = None
        self._default_adapter: Optional[str] = None
        for name, path in (adapters or {}).items():
            self.load_adapter(name, path)
        if default_adapter not in (None, BASE_ADAPTER) and default_adapter not in self._adapter_paths:
            raise EngineError(f"default adapter '{default_adapter}' is not loaded")
        self.default_adapter = default_adapter or None

    # ---- adapters --------------------------------------------------------------------------------------------

    @property
    def adapter_names(self) -> tuple[str, ...]:
        return tuple(self._adapter_paths)

    @property
    def default_adapter(self) -> Optional[str]:
        """The adapter requests with `adapter=None` run with (None or BASE_ADAPTER: the base model). Set freely:
        a name that is not loaded fails the requests that use it."""
        return self._default_adapter

    @default_adapter.setter
    def default_adapter(self, name: Optional[str]) -> None:
        self._default_adapter = name

    def lora_inputs(self) -> frozenset[str]:
        """Names of the decoder graph's inputs that are not token/mask/cache inputs (LoRA parameters)."""
        return frozenset(self._lora_input_specs())

    def _lora_input_specs(self) -> dict[str, tuple[str, tuple[Optional[int], ...]]]:
        """LoRA input name -> (ONNX Runtime tensor type, dims with None for symbolic ones)."""
        if self._lora_inputs is None:
            from onnx import helper

            proto = self._graph()
            specs = {}
            for i in proto.graph.input:
                if i.name.startswith(_STANDARD_INPUT_PREFIXES):
                    continue
                t = i.type.tensor_type
                np_type = helper.tensor_dtype_to_np_dtype(t.elem_type) if t.elem_type else None
                type_name = "tensor(float)" if np_type == np.float32 else f"tensor({np.dtype(np_type).name})"
                dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
                specs[i.name] = (type_name, dims)
            self._lora_inputs = specs
        return self._lora_inputs

    def _graph(self):
        """The decoder graph's structure (weights not loaded), read once."""
        if self._graph_proto is None:
            import onnx

            try:
                self._graph_proto = onnx.load(str(self._decoder_file), load_external_data=False)
            except Exception as e:
                raise EngineError(f"cannot read {self._decoder_file}: {first_line(e)}") from None
        return self._graph_proto

    def _logits_rows(self) -> Optional[int]:
        if not self._decoder_file.is_file():
            return 1
        return logits_rows(self._graph())

    def load_adapter(self, name: str, path: Path | str) -> None:
        """Load an .onnx_adapter file under `name` (requests select it with `GenerationRequest.adapter`)."""
        self._check_open()
        if not name:
            raise EngineError("an adapter needs a non-empty name")
        path = Path(path)
        if not path.is_file():
            raise ModelNotFoundError(f"adapter file {path} does not exist")
        inputs = self._lora_input_specs()
        if not inputs:
            raise EngineError(
                f"the model in {self.model_dir} has no LoRA inputs: export it with adapter support to use '{name}'"
            )
        try:
            import onnxruntime

            params = onnxruntime.AdapterFormat.read_adapter(str(path)).get_parameters()
        except Exception as e:
            raise EngineError(f"cannot read adapter {path}: {first_line(e)}") from None
        unknown = sorted(set(params) - set(inputs))
        if unknown:
            raise EngineError(
                f"adapter {path} does not fit the model: {len(unknown)} parameter(s) such as '{unknown[0]}' "
                f"are not inputs of {self._decoder_file.name}"
            )
        # onnxruntime would only notice a wrong shape or type at the first token: check them now.
        for pname, value in sorted(params.items()):
            type_name, dims = inputs[pname]
            shape = tuple(value.shape())
            if len(shape) != len(dims) or any(d is not None and d != s for d, s in zip(dims, shape)):
                want = "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
                raise EngineError(
                    f"adapter {path} does not fit the model: {pname} has shape {list(shape)}, the model needs {want}"
                )
            if value.data_type() != type_name:
                raise EngineError(
                    f"adapter {path} does not fit the model: {pname} is {value.data_type()}, the model needs {type_name}"
                )
        with self._lock:
            if self._adapters is None:
                self._adapters = self._og.Adapters(self._model)
            if name in self._adapter_paths:
                self._unload_locked(name)
            try:
                self._adapters.load(str(path), name)
            except Exception as e:
                raise EngineError(f"cannot load adapter {path}: {first_line(e)}") from None
            self._adapter_paths[name] = path
        log.info("loaded adapter '%s' from %s", name, path)

    def unload_adapter(self, name: str) -> None:
        with self._lock:
            if name not in self._adapter_paths:
                raise EngineError(f"adapter '{name}' is not loaded")
            self._unload_locked(name)
            if self.default_adapter == name:
                self.default_adapter = None

    def _unload_locked(self, name: str) -> None:
        # Every generator running the adapter must be gone before onnxruntime-genai lets it go.
        self._slots.drop(name)
        if self._slot is not None and self._slot.adapter == name:
            self._slot = None
        self._adapters.unload(name)
        del self._adapter_paths[name]

    # ---- KV slots --------------------------------------------------------------------------------------------

    @property
    def kv_slots(self) -> int:
        return len(self._slots)

    @property
    def kv_cache_bytes(self) -> int:
        """KV memory the slots hold (their allocated length, not their filled part)."""
        return self._slots.bytes

    def _slot_for(self, prompt: list[int], adapter: Optional[str], needed: int, *,
                  run_last: bool = True, extend_only: bool = False) -> tuple[Slot, int, bool]:
        """(slot, prompt tokens it already holds, whether it was made now) for a request needing `needed` tokens;
        `run_last`: keep the last prompt token to run (a generation needs its logits)."""
        length = self.max_length
        if needed > length:
            length = min(self.context_length, 1 << math.ceil(math.log2(needed)))
        pick = self._slots.pick(prompt, adapter, needed, length, run_last=run_last, extend_only=extend_only)
        if pick.slot is not None:
            slot = pick.slot
            if pick.reuse < len(slot.cached()):
                slot.gen.rewind_to(pick.reuse)
            slot.all_in_cache = True  # after the rewind, and for every token appended by the caller
            slot.touch()
            return slot, pick.reuse, False
        if pick.evict is not None:
            self._slots.remove(pick.evict)
        params = self._og.GeneratorParams(self._model)
        params.set_search_options(max_length=length, do_sample=False)
        gen = self._og.Generator(self._model, params)
        if adapter is not None:
            gen.set_active_adapter(self._adapters, adapter)
        slot = Slot(gen, length, adapter)
        self._slots.add(slot)
        log.debug("new KV slot (max_length %d, adapter %s; %d slots)", length, adapter, len(self._slots))
        return slot, 0, True

    def cached_tokens(self, prompt: str, *, adapter: Optional[str] = None) -> int:
        """How many tokens of `prompt` a KV slot already holds (the rest would be computed)."""
        with self._lock:
            self._check_open()
            ids = self.encode(prompt)
            return self._slots.best(ids, self._select_adapter(adapter))[1] if ids else 0

    def prefill(self, prompt: str, *, adapter: Optional[str] = None, cancel: Optional[threading.Event] = None,
                reserve: int = 256, chunk: int = 64) -> int:
        """Compute the KV cache of `prompt` ahead of the request that will send it (idle-time pre-warming), in
        chunks of `chunk` tokens with `cancel` checked between them, so that a real request waits at most one
        chunk. Returns the tokens computed (0: all were cached). `reserve`: tokens a request may generate after
        it (the slot must be long enough)."""
        with self._lock:
            self._check_open()
            try:
                ids = self.encode(prompt)
                if not ids or len(ids) >= self.context_length:
                    return 0
                adapter = self._select_adapter(adapter)
                slot, reused, _ = self._slot_for(ids, adapter, min(len(ids) + reserve, self.context_length),
                                                 run_last=False, extend_only=True)
                pos = reused
                while pos < len(ids):
                    if cancel is not None and cancel.is_set():
                        break
                    end = min(pos + chunk, len(ids))
                    slot.gen.append_tokens(np.asarray(ids[pos:end], dtype=np.int32))
                    pos = end
                return pos - reused
            except EngineError:
                raise
            except Exception as e:
                self._after_failure()
                raise EngineError(f"{self._runtime_label} prefill failed: {first_line(e)}") from e

    def _generate_locked(self, job: PreparedRequest) -> GenerationResult:
        request, prompt, max_new, adapter = job.request, job.prompt, job.max_new, job.adapter
        sw, cancel = job.stopwatch, job.cancel
        needed = len(prompt) + max_new

        slot, reused, rebuilt = self._slot_for(prompt, adapter, needed)
        self._slot = slot
        gen = slot.gen

        extra = {"rebuilt": rebuilt, "adapter": adapter, "provider": self.provider, "kv_slots": len(self._slots)}
        if cancel is not None and cancel.is_set():
            return self._result(job, "", (), FINISH_CANCELLED, reused, extra)

        # Prefill in chunks, checking cancel between them.
        pos = reused
        while pos < len(prompt):
            if cancel is not None and cancel.is_set():
                return self._result(job, "", (), FINISH_CANCELLED, reused, extra)
            end = min(pos + self.prefill_chunk, len(prompt))
            gen.append_tokens(np.asarray(prompt[pos:end], dtype=np.int32))
            pos = end
        sw.mark_prefill_done()

        ignore_eos = bool(getattr(request, "ignore_eos", False))
        lookup = None
        if request.temperature <= 0 and self.lookup_draft > 0:
            def run(tokens: list[int]) -> np.ndarray:
                gen.append_tokens(np.asarray(tokens, dtype=np.int32))
                if len(tokens) == 1:
                    return gen.get_logits().reshape(1, -1)
                rows = np.asarray(gen.get_output("logits"))
                return rows.reshape(-1, rows.shape[-1])[-len(tokens):]

            lookup = LookupDecoder(
                lambda: gen.get_logits().reshape(-1), run, gen.rewind_to, prompt, self.lookup_draft, max_new,
                () if ignore_eos else self.eos_token_ids,
            )
            next_token = lookup.next_token
        elif request.temperature > 0 or ignore_eos:
            # Choose tokens from the logits ourselves: sampling, or greedy through end tokens (onnxruntime-genai
            # marks the generator done at an end token and then only yields padding).
            pending: list[int] = []
            rng = self._rng if request.seed is None else np.random.default_rng(request.seed)

            def next_token() -> int:
                if pending:
                    gen.append_tokens(np.asarray(pending, dtype=np.int32))
                    pending.clear()
                logits = gen.get_logits().reshape(-1)
                tok = sample_token(logits, request.temperature, request.top_p, rng)
                pending.append(tok)
                return tok

        else:

            def next_token() -> int:
                gen.generate_next_token()
                return int(gen.get_next_tokens()[0])

        slot.all_in_cache = lookup is not None or request.temperature > 0 or ignore_eos
        out = self._run_loop(job, next_token)
        if lookup is not None:
            extra.update(lookup.stats())
        return self._result(job, out.text, out.token_ids, out.finish_reason, reused, extra)

    def reset_cache(self) -> None:
        """Forget every KV cache (the next request runs cold)."""
        with self._lock:
            self._slots.drop(everything=True)
            self._slot = None

    def _after_failure(self) -> None:
        # The slot's generator may be in any state after a runtime failure: drop it (the others are intact).
        if self._slot is not None:
            self._slots.remove(self._slot)
            self._slot = None

    def _release_locked(self) -> None:
        self._slots.drop(everything=True)
        self._slot = None
        self._adapters = None
        self._model = None


def _kv_bytes_per_token(model_cfg: dict, provider: str) -> int:
    """Bytes of K and V per token over all layers (fp32 on the CPU, fp16 on CUDA), from genai_config.json."""
    dec = model_cfg.get("decoder", {})
    try:
        per = 2 * int(dec["num_hidden_layers"]) * int(dec["num_key_value_heads"]) * int(dec["head_size"])
    except (KeyError, TypeError, ValueError):
        return 0
    return per * (2 if provider == "cuda" else 4)


class _OgTokenizer:
    """Fallback when the model folder has no tokenizer.json (special tokens are dropped from decoded text)."""

    def __init__(self, tok):
        self._tok = tok

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self._tok.encode(text)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(np.asarray(list(ids), dtype=np.int32))

