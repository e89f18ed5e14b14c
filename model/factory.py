"""The one engine factory: what the language server, every CLI command and training open.

An engine was assembled in four places (the server, `intarsia complete`, `intarsia doctor`, training's
evaluation), each with its own idea of which adapter wins. `open_engine(EngineSpec(...))` is now the only way,
and it has one adapter precedence:

    an explicit adapter  >  the adapter `intarsia train` promoted for the workspace  >  the model's shipped
    fill-in-the-middle adapter  >  none (the plain model)

The trained adapter continues the shipped one (same rank and targets) and replaces it; an explicit adapter turns
both off. `extra_adapters` are loaded by name besides (training's evaluation compares them request by request);
they never become the default.

Kinds: "ort" (ONNX Runtime in this process; the served form), "hf" (transformers, the reference), "remote" (an
OpenAI-compatible server), "test" (`TestEngine`). `build=True` builds a missing ORT model (the CLI: minutes on
a CPU, with a progress bar); the server passes `build=False`, so loading never builds or downloads, and a
missing model is an error that names the `intarsia model build` command.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from . import shipped as shipped_adapters
from .build import BuildOptions, BuiltModel, build, check_fim, find_built, hf_folder_for, resolve_gguf, with_fim_adapter
from .engine import Engine, GenerationRequest
from .errors import IntarsiaError, ModelNotFoundError
from .fim import QWEN25_CODER, FimFormat, get_format
from .hf_engine import HfEngine
from .lookup import DEFAULT_DRAFT
from .lora import export_adapter
from .ort_engine import OrtEngine
from .registry import ModelSource, resolve_source
from .remote_engine import RemoteEngine
from .test_engine import TestEngine
from .trained import AdapterStore, onnx_adapter_for
from .trust import check_peft_folder

log = logging.getLogger(__name__)

KINDS = ("ort", "hf", "remote", "test")
FIM_ADAPTER = "fim"  # the name the shipped fill-in-the-middle adapter is loaded under
EXPLICIT_ADAPTER = "explicit"

Progress = Callable[[str, Optional[int]], None]  # (message, percentage)


@dataclass(frozen=True)
class EngineSpec:
    """What to open (see the module docstring)."""

    kind: str = "ort"
    model: Optional[str] = None  # registry name, .gguf file or model folder; None: the registry default
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "exact"  # the build to serve / build (CPU); CUDA serves the best build it finds
    accuracy_level: int = 4
    threads: Optional[int] = None
    lookup_draft: int = DEFAULT_DRAFT
    kv_slots: int = 1  # KV caches kept by recency (ORT)
    kv_cache_mb: Optional[int] = None  # their memory bound
    max_length: Optional[int] = None  # tokens a KV slot holds (None: the engine's default, 4096)
    fim_format: Optional[str] = None  # None: the model's own
    adapter: Optional[str] = None  # an explicit adapter: an .onnx_adapter file or a peft folder
    workspace: Optional[str] = None  # serve the adapter `intarsia train` promoted for this folder
    trained_adapter: bool = True
    fim_adapter: bool = True  # the model's shipped fill-in-the-middle adapter
    extra_adapters: tuple[tuple[str, str], ...] = ()  # (name, path) also loaded, never the default
    remote_endpoint: Optional[str] = None
    remote_model: Optional[str] = None
    test_table: tuple[tuple[str, str], ...] = ()
    test_token_delay_ms: float = 0.0
    test_load_delay_ms: float = 0.0
    build: bool = False  # build a missing ORT model (CLI, training); the server never builds
    progress_bars: bool = False  # tqdm bars while building (CLI)
    warm_up: bool = True  # one short generation before returning (the server: the first request is not cold)


@dataclass
class LoadedEngine:
    """An open engine and what serving it needs to know. Not thread-safe: the language server touches it only from
    its event loop and its model thread, one at a time (see `swap_trained`)."""

    engine: Engine
    fim_format: FimFormat
    description: str
    model_path: Optional[str] = None
    # The workspace's trained adapters when the engine serves them, the version served now and the pointer stamp it
    # was read at: `swap_trained` runs when the stamp changes.
    store: Optional[AdapterStore] = None
    trained_version: Optional[str] = None
    trained_stamp: Any = None
    build_key: str = ""
    # The adapter served when no trained adapter is: the shipped FIM adapter's name, or None (the plain model).
    base_adapter: Optional[str] = None
    # Why the shipped FIM adapter is not served although it was asked for (a damaged file), else None.
    fim_adapter_error: Optional[str] = None
    built: Optional[BuiltModel] = field(default=None, repr=False)
    adapters: dict[str, Path] = field(default_factory=dict)  # the .onnx_adapter files loaded, by name

    def swap_trained(self) -> Optional[str]:
        """Serve the workspace's promoted adapter now (call between two requests, on the thread that runs them):
        load the new one, make it the default, unload the old one. Returns the version served (None: the shipped
        adapter or the plain model)."""
        store, engine = self.store, self.engine
        if store is None:
            return None
        stamp = store.stamp()
        version = store.current()
        old = self.trained_version
        new = version.name if version is not None else None
        if new != old:
            if version is not None:
                path = onnx_adapter_for(version, Path(self.model_path), self.build_key)
                engine.load_adapter(trained_adapter_name(new), path)
                engine.default_adapter = trained_adapter_name(new)
            else:
                engine.default_adapter = self.base_adapter
            if old is not None and trained_adapter_name(old) in engine.adapter_names:
                engine.unload_adapter(trained_adapter_name(old))
            base = f"shipped {self.base_adapter} adapter" if self.base_adapter else "base model"
            log.info("trained adapter for %s: %s -> %s", store.workspace, old or base, new or base)
        self.trained_version = new
        self.trained_stamp = stamp
        return new

    def close(self) -> None:
        self.engine.close()


def trained_adapter_name(version: str) -> str:
    return f"trained-{version}"


def build_command(spec: EngineSpec) -> str:
    cmd = "intarsia model build"
    if spec.model:
        cmd += f" {spec.model}"
    if spec.device == "cuda":
        cmd += " --device cuda"
    return cmd


def cuda_builds() -> tuple[BuildOptions, ...]:
    """Build options a CUDA engine can serve, best first: the GGUF's weights rounded once to fp16 (`exact`, or a
    plain fp16 export), then the builder's int4 (a second quantization: served with a warning)."""
    return tuple(BuildOptions(precision=p, provider="cuda") for p in ("exact", "fp16", "int4"))


def adapter_file(path: Path, model_dir: Path) -> Path:
    """An `.onnx_adapter` for `path`: used as is, or exported from a peft folder (safetensors only) into the built
    model's adapters/ folder (again when the folder changed)."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if path.is_dir() and (path / "adapter_config.json").exists():
        check_peft_folder(path)  # safetensors only, even when an export of it is cached
        out = Path(model_dir) / "adapters" / f"{path.resolve().name}.onnx_adapter"
        if not out.exists() or out.stat().st_mtime < (path / "adapter_config.json").stat().st_mtime:
            export_adapter(path, model_dir, out)
        return out
    raise IntarsiaError(f"adapter {path} is neither an .onnx_adapter file nor a peft folder (adapter_config.json)")


def _progress(progress: Optional[Progress], message: str, pct: Optional[int] = None) -> None:
    if progress is not None:
        try:
            progress(message, pct)
        except Exception:  # a progress report must never break loading
            log.debug("progress callback failed", exc_info=True)


def open_engine(spec: EngineSpec, *, progress: Optional[Progress] = None,
                cancel: Optional[threading.Event] = None) -> LoadedEngine:
    """Open the engine `spec` names (blocking: call it from a worker thread in a server). Raises an
    `IntarsiaError` whose message says what to do."""
    if spec.kind == "test":
        return _open_test(spec, progress, cancel)
    if spec.kind == "remote":
        return _open_remote(spec, progress)
    if spec.kind == "hf":
        return _open_hf(spec, progress)
    if spec.kind == "ort":
        return _open_ort(spec, progress)
    raise IntarsiaError(f"unknown engine '{spec.kind}' (choose {', '.join(KINDS)})")


def _open_test(spec: EngineSpec, progress: Optional[Progress], cancel: Optional[threading.Event]) -> LoadedEngine:
    fmt = get_format(spec.fim_format or QWEN25_CODER.name)
    delay = spec.test_load_delay_ms / 1000.0
    if delay:
        _progress(progress, "loading the test engine", 0)
        end = time.monotonic() + delay
        while time.monotonic() < end:
            if cancel is not None and cancel.is_set():
                raise IntarsiaError("loading was cancelled")
            time.sleep(min(0.02, max(end - time.monotonic(), 0)))
    engine = TestEngine(fim_format=fmt, table=spec.test_table, token_delay_s=spec.test_token_delay_ms / 1000.0)
    _progress(progress, "test engine ready", 100)
    return LoadedEngine(engine, fmt, f"test engine ({len(engine.table)} table entries)")


def _open_remote(spec: EngineSpec, progress: Optional[Progress]) -> LoadedEngine:
    if not spec.remote_endpoint:
        raise IntarsiaError("the remote engine needs an endpoint (setting intarsia.remoteEndpoint, or --endpoint URL: "
                            "an OpenAI-compatible server)")
    fmt = get_format(spec.fim_format or QWEN25_CODER.name)
    _progress(progress, f"connecting to {spec.remote_endpoint}", None)
    engine = RemoteEngine(spec.remote_endpoint, model=spec.remote_model, fim_format=fmt)
    return LoadedEngine(engine, fmt, f"remote {spec.remote_endpoint}", spec.remote_endpoint)


def _open_hf(spec: EngineSpec, progress: Optional[Progress]) -> LoadedEngine:
    """transformers on the fp32 folder (the reference); one adapter at construction: explicit, else shipped."""
    src = resolve_source(spec.model)
    _progress(progress, "finding the model", 0)
    gguf = resolve_gguf(src, progress=spec.progress_bars)
    hf_dir = hf_folder_for(src, gguf, progress=spec.progress_bars) if gguf is not None else src.path
    fmt = check_fim(hf_dir, spec.fim_format or (src.spec.fim_format if src.spec else None), src.name)
    adapter: Optional[Path] = None
    base_adapter = None
    if spec.adapter:
        adapter = Path(spec.adapter).expanduser()
        check_peft_folder(adapter)
    elif spec.fim_adapter:
        shipped = shipped_adapters.shipped_for(src)
        if shipped is not None:
            adapter, base_adapter = shipped.path, FIM_ADAPTER
    engine = HfEngine(hf_dir, device="cpu" if spec.device == "auto" else spec.device, adapter_dir=adapter)
    desc = f"{src.name} (transformers, {engine.provider})" + (" + FIM adapter" if base_adapter else "")
    return LoadedEngine(engine, fmt, desc, str(hf_dir), base_adapter=base_adapter)


def _find_or_build(src: ModelSource, spec: EngineSpec) -> BuiltModel:
    if spec.build:
        provider = "cuda" if spec.device == "cuda" else "cpu"
        return build(src, BuildOptions(precision=spec.precision, provider=provider,
                                       accuracy_level=spec.accuracy_level),
                     progress=spec.progress_bars, fim_format=spec.fim_format, fim_adapter=False)
    if spec.device == "cuda":
        candidates = cuda_builds()
    else:
        candidates = (BuildOptions(precision=spec.precision, accuracy_level=spec.accuracy_level),)
        if spec.device == "auto":
            candidates += cuda_builds()
    built = next((b for b in (find_built(src, o) for o in candidates) if b is not None), None)
    if built is None:
        raise ModelNotFoundError(
            f"no built model for {src.name}: run `{build_command(spec)}`, then reload the model "
            "(command intarsia.reloadModel)")
    if built.manifest.get("precision") == "int4":
        log.warning("serving %s's builder int4 export (a second quantization of the GGUF); `%s` builds the exact "
                    "model", src.name, build_command(spec))
    return built


def _open_ort(spec: EngineSpec, progress: Optional[Progress]) -> LoadedEngine:
    _progress(progress, "finding the model", 0)
    src = resolve_source(spec.model)
    built = _find_or_build(src, spec)
    _progress(progress, "checking the tokenizer", 10)
    fmt = check_fim(built.path, spec.fim_format or built.manifest.get("fim_format"), src.name)

    adapters: dict[str, Path] = {}
    default_adapter = base_adapter = fim_error = None
    if spec.adapter:  # explicit > trained > shipped FIM > none
        _progress(progress, "preparing the adapter", 20)
        adapters[EXPLICIT_ADAPTER] = adapter_file(Path(spec.adapter), built.path)
        default_adapter = EXPLICIT_ADAPTER
    elif spec.fim_adapter:
        _progress(progress, "preparing the fill-in-the-middle adapter", 20)
        try:
            fim = with_fim_adapter(src, built).fim_adapter
        except IntarsiaError as e:  # a damaged adapter must not cost the model: serve it plain, say why
            log.warning("serving %s without its fill-in-the-middle adapter: %s", src.name, e)
            fim, fim_error = None, str(e)
        if fim is not None:
            adapters[FIM_ADAPTER] = fim
            default_adapter = base_adapter = FIM_ADAPTER
    for name, path in spec.extra_adapters:
        adapters[name] = adapter_file(Path(path), built.path)
    store = None
    if not spec.adapter and spec.trained_adapter and spec.workspace:
        store = AdapterStore(spec.workspace, src.cache_name)
    _progress(progress, f"loading {src.name}", 30)
    engine = OrtEngine(built.path, provider=spec.device, threads=spec.threads, adapters=adapters,
                       default_adapter=default_adapter, lookup_draft=spec.lookup_draft, kv_slots=spec.kv_slots,
                       kv_cache_mb=spec.kv_cache_mb, max_length=spec.max_length)
    loaded = LoadedEngine(engine, fmt, "", str(built.path), store=store,
                          build_key=built.manifest.get("build_key", "model"), base_adapter=base_adapter,
                          fim_adapter_error=fim_error, built=built, adapters=dict(adapters))
    try:
        if store is not None:
            try:
                loaded.swap_trained()
            except IntarsiaError as e:  # a broken trained adapter must not cost the base model
                log.warning("cannot serve the trained adapter of %s: %s", spec.workspace, e)
                loaded.trained_stamp = store.stamp()
        if spec.warm_up:
            _progress(progress, "warming up", 80)
            engine.generate(GenerationRequest(prompt=fmt.render("def f(", ")\n"), max_new_tokens=1,
                                              stop=fmt.stop_strings))
    except Exception:
        engine.close()
        raise
    _progress(progress, "ready", 100)
    desc = f"{src.name} ({built.manifest.get('precision', '?')}, {engine.provider})"
    if default_adapter == EXPLICIT_ADAPTER:
        desc += f" + adapter {Path(spec.adapter).name}"
    elif base_adapter:
        desc += " + FIM adapter"
    loaded.description = desc
    return loaded


__all__ = ["EngineSpec", "LoadedEngine", "open_engine", "adapter_file", "build_command", "cuda_builds", "KINDS",
           "FIM_ADAPTER", "EXPLICIT_ADAPTER", "trained_adapter_name"]
