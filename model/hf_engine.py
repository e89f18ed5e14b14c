"""The transformers engine: the reference for parity tests and evaluation.

Greedy decoding token by token with the model's own KV cache (one forward pass over the prompt, then one per
new token), so `cancel` is honoured before every forward pass. Stop strings, end tokens, streaming, token
accounting and timings are the same code as `OrtEngine` (`decode_loop`, `TextAssembler`), so the two engines
can be compared token for token. With `adapter_dir` a PEFT LoRA adapter is applied (not merged); requests
select it with `adapter=None` or its folder name, and the base model with `adapter=""`.
Every request runs cold: a reference does not reuse caches.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from .engine import (
    FINISH_CANCELLED,
    Engine,
    GenerationRequest,
    GenerationResult,
    Stopwatch,
    TextCallback,
)
from .errors import EngineError, ModelNotFoundError
from .ort_engine import HfTokenizerFile, TextAssembler, _GuardedCallback, decode_loop, sample_token
from .trust import check_hf_folder, check_peft_folder

log = logging.getLogger(__name__)


class _TransformersTokenizer:
    def __init__(self, tok: Any):
        self._tok = tok

    def encode(self, text: str) -> list[int]:
        return list(self._tok(text, add_special_tokens=True)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


def _load_tokenizer(source: Any):
    """A tokenizer.json path, a folder (its tokenizer.json, else transformers' AutoTokenizer), or a
    transformers tokenizer object."""
    if source is None:
        return None
    if isinstance(source, (str, Path)):
        p = Path(source)
        if p.is_file():
            return HfTokenizerFile(p)
        if (p / "tokenizer.json").is_file():
            return HfTokenizerFile(p / "tokenizer.json")
        if p.is_dir():
            from transformers import AutoTokenizer

            try:
                return _TransformersTokenizer(AutoTokenizer.from_pretrained(str(p), trust_remote_code=False))
            except Exception as e:
                raise EngineError(f"cannot load a tokenizer from {p}: {str(e).splitlines()[0]}") from None
        raise ModelNotFoundError(f"tokenizer {p} does not exist")
    if hasattr(source, "decode") and callable(source):
        return _TransformersTokenizer(source)
    raise EngineError(f"unsupported tokenizer object {type(source).__name__}")


def _torch_dtype(dtype: Any, device: str):
    import torch

    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return {
            "float32": torch.float32,
            "fp32": torch.float32,
            "float16": torch.float16,
            "fp16": torch.float16,
            "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16,
        }[str(dtype)]
    except KeyError:
        raise EngineError(f"unknown dtype '{dtype}' (choose float32, float16, bfloat16 or auto)") from None


class HfEngine(Engine):
    """transformers (+ PEFT) engine.

    `model_dir_or_model`: a folder with a transformers checkpoint, or a loaded causal-LM module (then pass
    `tokenizer`). `device`: "cpu", "cuda" or "auto". `dtype`: "float32" (default), "float16", "bfloat16",
    a torch dtype, or "auto" (bfloat16 on CUDA, float32 on CPU). `adapter_dir`: a PEFT LoRA adapter folder.
    `eos_token_ids`: tokens that end a generation (default: the model's generation_config/config eos ids).
    """

    name = "hf"

    def __init__(
        self,
        model_dir_or_model: Any,
        *,
        tokenizer: Any = None,
        device: str = "cpu",
        dtype: Any = "float32",
        adapter_dir: Optional[Path | str] = None,
        eos_token_ids: Optional[Sequence[int]] = None,
        seed: Optional[int] = None,
    ):
        import torch

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EngineError("CUDA was requested but torch sees no CUDA device")
        if not (device == "cpu" or device.startswith("cuda")):
            raise EngineError(f"unknown device '{device}' (choose cpu, cuda or auto)")
        self.device = device
        self._dtype = _torch_dtype(dtype, device)
        self._lock = threading.Lock()
        self._rng = np.random.default_rng(seed)
        self._closed = False

        if isinstance(model_dir_or_model, (str, Path)):
            model_dir = Path(model_dir_or_model)
            if not (model_dir / "config.json").is_file():
                raise ModelNotFoundError(f"no transformers model in {model_dir} (config.json is missing)")
            check_hf_folder(model_dir)  # no auto_map code, no pickle-only weights (model.trust)
            from transformers import AutoModelForCausalLM

            try:
                model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=self._dtype, trust_remote_code=False,
                                                             use_safetensors=True)
            except Exception as e:
                raise EngineError(f"cannot load the model in {model_dir}: {str(e).splitlines()[0]}") from None
            self._tok = _load_tokenizer(tokenizer if tokenizer is not None else model_dir)
        else:
            model = model_dir_or_model
            source = tokenizer if tokenizer is not None else getattr(model, "name_or_path", None) or None
            self._tok = _load_tokenizer(source)
            if self._tok is None:
                raise EngineError("HfEngine needs a tokenizer when given a model object")
        if adapter_dir is not None:
            adapter_dir = Path(adapter_dir)
            if not (adapter_dir / "adapter_config.json").is_file():
                raise ModelNotFoundError(f"no PEFT adapter in {adapter_dir} (adapter_config.json is missing)")
            check_peft_folder(adapter_dir)  # adapter_model.safetensors, never a pickle (model.trust)
            from peft import PeftModel

            try:
                model = PeftModel.from_pretrained(model, str(adapter_dir))
            except Exception as e:
                raise EngineError(f"cannot apply the adapter in {adapter_dir}: {str(e).splitlines()[0]}") from None
        self.adapter_dir = adapter_dir
        # Requests name it by its folder's name; `adapter=""` runs the base model (PEFT's disable_adapter).
        self.adapter_name: Optional[str] = adapter_dir.name if adapter_dir is not None else None
        self._model = model.to(device=device, dtype=self._dtype).eval()
        config = getattr(self._model, "config", None)
        self.context_length = int(getattr(config, "max_position_embeddings", 0) or 1 << 30)
        if eos_token_ids is None:
            eos: set[int] = set()
            for src in (getattr(self._model, "generation_config", None), config):
                e = getattr(src, "eos_token_id", None) if src is not None else None
                if isinstance(e, int):
                    eos.add(e)
                elif e:
                    eos.update(int(x) for x in e)
            eos_token_ids = sorted(eos)
        self.eos_token_ids: tuple[int, ...] = tuple(int(e) for e in eos_token_ids)
        log.info("loaded transformers model on %s (%s)", device, self._dtype)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(ids)

    def generate(
        self,
        request: GenerationRequest,
        *,
        cancel: Optional[threading.Event] = None,
        on_text: Optional[TextCallback] = None,
    ) -> GenerationResult:
        with self._lock:
            if self._closed:
                raise EngineError("the transformers engine is closed")
            if request.adapter not in (None, "", self.adapter_name):
                raise EngineError(
                    f"adapter '{request.adapter}' is not loaded (HfEngine has "
                    f"{repr(self.adapter_name) if self.adapter_name else 'no adapter'})"
                )
            callback = _GuardedCallback(on_text) if on_text is not None else None
            try:
                return self._generate_locked(request, cancel, callback)
            except EngineError:
                raise
            except Exception as e:
                if callback is not None and callback.raised is e:
                    raise  # the caller's own error
                first = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
                raise EngineError(f"transformers generation failed: {first}") from e

    def _generate_locked(
        self, request: GenerationRequest, cancel: Optional[threading.Event], on_text: Optional[TextCallback]
    ) -> GenerationResult:
        import torch
        from transformers import DynamicCache

        sw = Stopwatch()
        prompt = self.encode(request.prompt)
        if not prompt:
            raise EngineError("the prompt is empty")
        if len(prompt) >= self.context_length:
            raise EngineError(
                f"the prompt has {len(prompt)} tokens; the model's context is {self.context_length} tokens"
            )
        max_new = min(max(request.max_new_tokens, 0), self.context_length - len(prompt))
        use_base = request.adapter == "" and self.adapter_name is not None
        adapter = None if use_base else self.adapter_name
        extra = {"adapter": adapter, "device": self.device}
        if cancel is not None and cancel.is_set():
            return GenerationResult("", (), FINISH_CANCELLED, sw.timings(len(prompt), 0, 0), extra)

        model = self._model
        cache = DynamicCache()
        state: dict[str, Any] = {}

        def forward(ids: list[int]) -> np.ndarray:
            x = torch.tensor([ids], dtype=torch.long, device=self.device)
            out = model(input_ids=x, past_key_values=cache, use_cache=True, logits_to_keep=1)
            return out.logits[0, -1].float().cpu().numpy()

        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode())
            if use_base:
                stack.enter_context(model.disable_adapter())
            state["logits"] = forward(prompt)
            sw.mark_prefill_done()

            def next_token() -> int:
                if "pending" in state:
                    state["logits"] = forward([state.pop("pending")])
                tok = sample_token(state["logits"], request.temperature, request.top_p, self._rng)
                state["pending"] = tok
                return tok

            assembler = TextAssembler(self._tok.decode, request.stop, prompt[-1:])
            out = decode_loop(
                request,
                next_token,
                assembler,
                self.eos_token_ids,
                sw,
                max_new_tokens=max_new,
                cancel=cancel,
                on_text=on_text,
            )
        return GenerationResult(
            text=out.text,
            token_ids=out.token_ids,
            finish_reason=out.finish_reason,
            timings=sw.timings(len(prompt), 0, len(out.token_ids)),
            extra=extra,
        )

    def close(self) -> None:
        with self._lock:
            self._model = None
            self._closed = True
