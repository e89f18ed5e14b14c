"""Load the engine the settings ask for: in-process ONNX Runtime, a remote endpoint, or the test engine.

`load_engine(settings, progress=...)` returns a `LoadedEngine` (engine, FIM format, description) or raises an
`IntarsiaError` whose message says what to do (a missing model names the `intarsia model build` command).
Loading never builds or downloads a model: that takes minutes and belongs to the CLI.

`TestEngine` is a deterministic `Engine` for protocol tests and editor integration work: it finds the FIM
prefix and suffix in the prompt, answers from a table (the longest key the prefix ends with), else with a
rule (the rest of an earlier line that starts like the current one), and emits the answer token by token
with an optional delay, checking the cancel event before each token like the real engines.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from intarsia.model.engine import (
    FINISH_CANCELLED,
    FINISH_EOS,
    FINISH_LENGTH,
    FINISH_STOP,
    Engine,
    GenerationRequest,
    GenerationResult,
    StopMatcher,
    Stopwatch,
    TextCallback,
)
from intarsia.model.errors import EngineError, IntarsiaError, ModelNotFoundError
from intarsia.model.fim import QWEN25_CODER, FimFormat, get_format

from .settings import Settings

log = logging.getLogger(__name__)

Progress = Callable[[str, Optional[int]], None]  # (message, percentage)

# A table value that makes the test engine raise (tests of the server's error handling).
RAISE_MARKER = "!raise "


@dataclass
class LoadedEngine:
    engine: Engine
    fim_format: FimFormat
    description: str
    model_path: Optional[str] = None
    # The workspace's trained adapters (model.trained.AdapterStore) when the engine serves them, the version
    # served now and the pointer stamp it was read at: the session swaps adapters when the stamp changes.
    store: Any = None
    trained_version: Optional[str] = None
    trained_stamp: Any = None
    build_key: str = ""
    # The adapter served when no trained adapter is: the model's shipped FIM adapter (None: the plain model).
    base_adapter: Optional[str] = None


# ------------------------------------------------------------------------------------------------ test engine

_TOKEN_RE = re.compile(r"[A-Za-z_0-9]+|[ \t]+|\r?\n|[^\sA-Za-z_0-9]", re.UNICODE)


class TestEngine(Engine):
    """Deterministic completions from a table or a rule; see the module docstring."""

    __test__ = False  # not a pytest test class
    name = "test"

    def __init__(
        self,
        *,
        fim_format: FimFormat = QWEN25_CODER,
        table: Mapping[str, str] | Sequence[tuple[str, str]] = (),
        token_delay_s: float = 0.0,
    ):
        self.fim_format = fim_format
        items = table.items() if isinstance(table, Mapping) else table
        # Longest keys first: the most specific entry wins.
        self.table = sorted(((k, v) for k, v in items if k), key=lambda kv: -len(kv[0]))
        self.token_delay_s = max(float(token_delay_s), 0.0)
        self.calls = 0
        self.last_prompt: Optional[str] = None
        self._lock = threading.Lock()
        self._closed = False
        specials = sorted(set(fim_format.special_tokens), key=len, reverse=True)
        self._special_re = re.compile("|".join(re.escape(s) for s in specials)) if specials else None

    # ---- tokens

    def _pieces(self, text: str) -> list[str]:
        out: list[str] = []
        pos = 0
        if self._special_re is not None:
            for m in self._special_re.finditer(text):
                out.extend(_TOKEN_RE.findall(text[pos:m.start()]))
                out.append(m.group(0))
                pos = m.end()
        out.extend(_TOKEN_RE.findall(text[pos:]))
        return out

    def encode(self, text: str) -> list[int]:
        return [zlib.crc32(p.encode("utf-8", "surrogatepass")) & 0xFFFF for p in self._pieces(text)]

    def count_tokens(self, text: str) -> int:
        return len(self._pieces(text))

    # ---- generation

    def split_prompt(self, prompt: str) -> tuple[str, str]:
        """(prefix, suffix) of the current file in a rendered FIM prompt."""
        f = self.fim_format
        p = prompt.rfind(f.prefix_token)
        if p < 0:
            return prompt, ""
        rest = prompt[p + len(f.prefix_token) + len(f.prefix_sep):]
        s = rest.find(f.suffix_token)
        if s < 0:
            return rest, ""
        prefix = rest[:s]
        if f.suffix_sep and prefix.endswith(f.suffix_sep):
            prefix = prefix[: -len(f.suffix_sep)]
        suffix = rest[s + len(f.suffix_token):]
        m = suffix.rfind(f.middle_token)
        if m >= 0:
            suffix = suffix[:m]
        if f.middle_sep and suffix.endswith(f.middle_sep):
            suffix = suffix[: -len(f.middle_sep)]
        return prefix, suffix

    def answer(self, prefix: str, suffix: str) -> str:
        for key, value in self.table:
            if prefix.endswith(key):
                return value
        return _echo_rule(prefix)

    def generate(
        self,
        request: GenerationRequest,
        *,
        cancel: Optional[threading.Event] = None,
        on_text: Optional[TextCallback] = None,
    ) -> GenerationResult:
        with self._lock:
            if self._closed:
                raise EngineError("the test engine is closed")
            self.calls += 1
            self.last_prompt = request.prompt
        sw = Stopwatch()
        prompt_tokens = self.count_tokens(request.prompt)
        prefix, suffix = self.split_prompt(request.prompt)
        answer = self.answer(prefix, suffix)
        if answer.startswith(RAISE_MARKER):
            raise RuntimeError(answer[len(RAISE_MARKER):] or "test engine failure")
        sw.mark_prefill_done()
        matcher = StopMatcher(request.stop)
        pieces = self._pieces(answer)
        finish = FINISH_EOS
        produced = 0
        for i, piece in enumerate(pieces):
            if cancel is not None and cancel.is_set():
                finish = FINISH_CANCELLED
                break
            if produced >= request.max_new_tokens:
                finish = FINISH_LENGTH
                break
            if self.token_delay_s:
                time.sleep(self.token_delay_s)
            sw.mark_token()
            produced += 1
            out = matcher.feed(piece)
            if out and on_text is not None:
                on_text(out)
            if matcher.stopped:
                finish = FINISH_STOP
                break
        if not matcher.stopped:
            tail = matcher.flush()
            if tail and on_text is not None:
                on_text(tail)
        ids = tuple(self.encode(matcher.text))
        return GenerationResult(
            text=matcher.text,
            token_ids=ids,
            finish_reason=finish,
            timings=sw.timings(prompt_tokens, 0, produced),
            extra={"engine": "test"},
        )

    def close(self) -> None:
        self._closed = True


def _echo_rule(prefix: str) -> str:
    """The rest of the latest earlier line that starts with the current line's text (indentation aside)."""
    ls = prefix.rfind("\n") + 1
    typed = prefix[ls:].lstrip(" \t")
    if not typed.strip():
        return ""
    for line in reversed(prefix[:ls].splitlines()):
        body = line.lstrip(" \t")
        if body.startswith(typed) and len(body) > len(typed):
            return body[len(typed):]
    return ""


# ------------------------------------------------------------------------------------------------ loading


def _progress(progress: Optional[Progress], message: str, pct: Optional[int] = None) -> None:
    if progress is not None:
        try:
            progress(message, pct)
        except Exception:  # a progress report must never break loading
            log.debug("progress callback failed", exc_info=True)


def load_engine(settings: Settings, *, progress: Optional[Progress] = None,
                cancel: Optional[threading.Event] = None, workspace: Optional[str] = None) -> LoadedEngine:
    """Load the engine of `settings` (blocking: call it from a worker thread). With a `workspace`, the ORT
    engine also serves the adapter `intarsia train` promoted for it (setting trainedAdapter)."""
    if settings.engine == "test":
        return _load_test(settings, progress, cancel)
    if settings.engine == "remote":
        return _load_remote(settings, progress)
    if settings.engine == "ort":
        return _load_ort(settings, progress, workspace)
    raise IntarsiaError(f"unknown engine '{settings.engine}' (choose ort, remote or test)")


def _load_test(settings: Settings, progress: Optional[Progress], cancel: Optional[threading.Event]) -> LoadedEngine:
    fmt = get_format(settings.fim_format or QWEN25_CODER.name)
    delay = settings.test_load_delay_ms / 1000.0
    if delay:
        _progress(progress, "loading the test engine", 0)
        end = time.monotonic() + delay
        while time.monotonic() < end:
            if cancel is not None and cancel.is_set():
                raise IntarsiaError("loading was cancelled")
            time.sleep(min(0.02, max(end - time.monotonic(), 0)))
    engine = TestEngine(fim_format=fmt, table=settings.test_table, token_delay_s=settings.test_token_delay_ms / 1000.0)
    _progress(progress, "test engine ready", 100)
    return LoadedEngine(engine, fmt, f"test engine ({len(engine.table)} table entries)")


def _load_remote(settings: Settings, progress: Optional[Progress]) -> LoadedEngine:
    if not settings.remote_endpoint:
        raise IntarsiaError(
            "engine 'remote' needs the setting intarsia.remoteEndpoint (an OpenAI-compatible server URL)")
    from intarsia.model.remote_engine import RemoteEngine

    fmt = get_format(settings.fim_format or QWEN25_CODER.name)
    _progress(progress, f"connecting to {settings.remote_endpoint}", None)
    engine = RemoteEngine(settings.remote_endpoint, model=settings.remote_model, fim_format=fmt)
    return LoadedEngine(engine, fmt, f"remote {settings.remote_endpoint}", settings.remote_endpoint)


def _build_command(settings: Settings, name: str) -> str:
    cmd = "intarsia model build"
    if settings.model:
        cmd += f" {settings.model}"
    if settings.device == "cuda":
        cmd += " --device cuda"
    return cmd


def cuda_builds() -> tuple:
    """Build options a CUDA engine can serve, best first: the GGUF's weights rounded once to fp16 (`exact`, or a
    plain fp16 export), then the builder's int4 (a second quantization: served with a warning)."""
    from intarsia.model.build import BuildOptions

    return tuple(BuildOptions(precision=p, provider="cuda") for p in ("exact", "fp16", "int4"))


FIM_ADAPTER = "fim"


def trained_adapter_name(version: str) -> str:
    return f"trained-{version}"


def swap_trained_adapter(loaded: LoadedEngine) -> Optional[str]:
    """Serve the workspace's promoted adapter now (call on the model thread, between two requests): load the
    new one, make it the default, unload the old one. Returns the version served (None: the base model)."""
    from intarsia.model.trained import onnx_adapter_for

    store = loaded.store
    stamp = store.stamp()
    version = store.current()
    engine = loaded.engine
    old = loaded.trained_version
    new = version.name if version is not None else None
    if new != old:
        if version is not None:
            path = onnx_adapter_for(version, Path(loaded.model_path), loaded.build_key)
            engine.load_adapter(trained_adapter_name(new), path)
            engine.default_adapter = trained_adapter_name(new)
        else:
            engine.default_adapter = loaded.base_adapter
        if old is not None and trained_adapter_name(old) in engine.adapter_names:
            engine.unload_adapter(trained_adapter_name(old))
        base = f"shipped {loaded.base_adapter} adapter" if loaded.base_adapter else "base model"
        log.info("trained adapter for %s: %s -> %s", store.workspace, old or base, new or base)
    loaded.trained_version = new
    loaded.trained_stamp = stamp
    return new


def _load_ort(settings: Settings, progress: Optional[Progress], workspace: Optional[str] = None) -> LoadedEngine:
    from intarsia.model.build import BuildOptions, check_fim, find_built
    from intarsia.model.registry import resolve_source

    _progress(progress, "finding the model", 0)
    src = resolve_source(settings.model)
    candidates = cuda_builds() if settings.device == "cuda" else (BuildOptions(),)
    if settings.device == "auto":
        candidates += cuda_builds()
    built = next((b for b in (find_built(src, o) for o in candidates) if b is not None), None)
    if built is not None and built.manifest.get("precision") == "int4":
        log.warning("serving %s's builder int4 export (a second quantization of the GGUF); `%s` builds the exact "
                    "model", src.name, _build_command(settings, src.name))
    if built is None:
        raise ModelNotFoundError(
            f"no built model for {src.name}: run `{_build_command(settings, src.name)}`, then reload the model "
            "(command intarsia.reloadModel)")
    _progress(progress, "checking the tokenizer", 10)
    fmt = check_fim(built.path, settings.fim_format or built.manifest.get("fim_format"), src.name)
    from intarsia.model.ort_engine import OrtEngine

    adapters = {}
    default_adapter = None
    if settings.adapter:
        from intarsia.server.cli import _adapter_file

        _progress(progress, "preparing the adapter", 20)
        adapters["settings"] = _adapter_file(Path(settings.adapter).expanduser(), built.path)
        default_adapter = "settings"
    base_adapter = None
    if not settings.adapter and settings.fim_adapter:
        from intarsia.model.build import with_fim_adapter

        _progress(progress, "preparing the fill-in-the-middle adapter", 20)
        try:
            fim = with_fim_adapter(src, built).fim_adapter
        except IntarsiaError as e:  # a damaged adapter must not cost the model: serve it plain, say why
            log.warning("serving %s without its fill-in-the-middle adapter: %s", src.name, e)
            fim = None
        if fim is not None:
            adapters[FIM_ADAPTER] = fim
            default_adapter = base_adapter = FIM_ADAPTER
    store = None
    if not settings.adapter and settings.trained_adapter and workspace:
        from intarsia.model.trained import AdapterStore

        store = AdapterStore(workspace, src.cache_name)
    _progress(progress, f"loading {src.name}", 30)
    engine = OrtEngine(built.path, provider=settings.device, threads=settings.threads, adapters=adapters,
                       default_adapter=default_adapter, lookup_draft=settings.lookup_draft)
    loaded = LoadedEngine(engine, fmt, "", str(built.path), store=store,
                          build_key=built.manifest.get("build_key", "model"), base_adapter=base_adapter)
    if store is not None:
        try:
            swap_trained_adapter(loaded)
        except IntarsiaError as e:  # a broken trained adapter must not cost the base model
            log.warning("cannot serve the trained adapter of %s: %s", workspace, e)
            loaded.trained_stamp = store.stamp()
    try:
        _progress(progress, "warming up", 80)
        warm = fmt.render("def f(", ")\n")
        engine.generate(GenerationRequest(prompt=warm, max_new_tokens=1, stop=fmt.stop_strings))
    except Exception:
        engine.close()
        raise
    _progress(progress, "ready", 100)
    desc = f"{src.name} ({built.manifest.get('precision', '?')}, {getattr(engine, 'provider', settings.device)})"
    if base_adapter:
        desc += " + FIM adapter"
    loaded.description = desc
    return loaded


__all__ = ["FIM_ADAPTER", "LoadedEngine", "TestEngine", "load_engine", "RAISE_MARKER"]
