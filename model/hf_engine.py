"""The transformers engine: the reference for parity tests and evaluation.

Greedy decoding token by token with the model's own KV cache (one forward pass over the prompt, then one per
new token), so `cancel` is honoured before every forward pass. Stop strings, end tokens, streaming, token
accounting, timings and errors are the same code as `OrtEngine` (`model.decoding.LocalEngine`), so the two
engines can be compared token for token. With `adapter_dir` a PEFT LoRA adapter is applied (not merged);
requests select it with `adapter=None` or its folder name, and the base model with `adapter=""`. It is the
engine's only adapter: PEFT wraps the model once, at construction, so `load_adapter`/`unload_adapter` refuse
(a reference loads what it is compared with up front). Every request runs cold: a reference does not reuse
caches, so `reset_cache` has nothing to do.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from .chat import read_chat_template
from .decoding import HfTokenizerFile, LocalEngine, PreparedRequest, sample_token
from .engine import BASE_ADAPTER, FINISH_CANCELLED, GenerationResult
from .errors import EngineError, ModelNotFoundError
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


class HfEngine(LocalEngine):
    """transformers (+ PEFT) engine.

    `model_dir_or_model`: a folder with a transformers checkpoint, or a loaded causal-LM module (then pass
    `tokenizer`). `device`: "cpu", "cuda" or "auto". `dtype`: "float32" (default), "float16", "bfloat16",
    a torch dtype, or "auto" (bfloat16 on CUDA, float32 on CPU). `adapter_dir`: a PEFT LoRA adapter folder.
    `eos_token_ids`: tokens that end a generation (default: the model's generation_config/config eos ids).

    The adapter API: `adapter_names` is the adapter's name (its folder's name) or nothing; `default_adapter`
    starts as that name and may be set to it, or to None/BASE_ADAPTER (the base model); `load_adapter` and
    `unload_adapter` raise EngineError (the adapter is applied at construction).
    """

    name = "hf"
    _engine_label = "transformers"
    _runtime_label = "transformers"

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

        super().__init__()
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EngineError("CUDA was requested but torch sees no CUDA device")
        if not (device == "cpu" or device.startswith("cuda")):
            raise EngineError(f"unknown device '{device}' (choose cpu, cuda or auto)")
        self.device = device
        self.provider = "cuda" if device.startswith("cuda") else "cpu"
        self._dtype = _torch_dtype(dtype, device)
        self._rng = np.random.default_rng(seed)

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
            self._chat_template = read_chat_template(model_dir)
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
        self._default_adapter = self.adapter_name
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

    # ---- adapters: the one given at construction -------------------------------------------------------------

    @property
    def adapter_names(self) -> tuple[str, ...]:
        return (self.adapter_name,) if self.adapter_name is not None else ()

    def load_adapter(self, name: str, path: Path | str) -> None:
        raise EngineError(
            f"the transformers engine takes its one PEFT adapter at construction (HfEngine(adapter_dir=...)); "
            f"it cannot load '{name}' from {path} at run time"
        )

    def unload_adapter(self, name: str) -> None:
        if name in self.adapter_names:
            raise EngineError(
                f"the transformers engine cannot unload its adapter '{name}': it is applied at construction "
                '(select the base model with adapter="" or default_adapter = None)'
            )
        raise EngineError(self._not_loaded_message(name))

    @property
    def default_adapter(self) -> Optional[str]:
        """The adapter requests with `adapter=None` run with: the constructor's adapter, or None (the base model)."""
        return self._default_adapter

    @default_adapter.setter
    def default_adapter(self, name: Optional[str]) -> None:
        if name in (None, BASE_ADAPTER):
            self._default_adapter = None
        elif name in self.adapter_names:
            self._default_adapter = name
        else:
            raise EngineError(self._not_loaded_message(name))

    def _not_loaded_message(self, name: str) -> str:
        has = repr(self.adapter_name) if self.adapter_name else "no adapter"
        return f"adapter '{name}' is not loaded (HfEngine has {has})"

    # ---- generation ------------------------------------------------------------------------------------------

    def _generate_locked(self, job: PreparedRequest) -> GenerationResult:
        import torch
        from transformers import DynamicCache

        use_base = job.adapter is None and self.adapter_name is not None
        extra = {"adapter": job.adapter, "device": self.device}
        if job.cancel is not None and job.cancel.is_set():
            return self._result(job, "", (), FINISH_CANCELLED, 0, extra)

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
            state["logits"] = forward(job.prompt)
            job.stopwatch.mark_prefill_done()
            seed = job.request.seed
            rng = self._rng if seed is None else np.random.default_rng(seed)

            def next_token() -> int:
                if "pending" in state:
                    state["logits"] = forward([state.pop("pending")])
                tok = sample_token(state["logits"], job.request.temperature, job.request.top_p, rng)
                state["pending"] = tok
                return tok

            out = self._run_loop(job, next_token)
        return self._result(job, out.text, out.token_ids, out.finish_reason, 0, extra)

    def _release_locked(self) -> None:
        self._model = None
