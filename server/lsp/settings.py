"""Settings of the language server: one typed, frozen dataclass with defaults.

Clients send settings in `initializationOptions` and `workspace/didChangeConfiguration` (section
"intarsia"), as camelCase keys (`maxTokens`) or snake_case (`max_tokens`), flat or under an "intarsia" key.
`parse_settings(raw, base)` returns the new settings and one warning per bad value; a bad value keeps the
previous (or default) value, it never fails the request.

    engine                "ort" | "remote" | "test"         which engine generates (default "ort")
    model                 registry name, .gguf file, or model folder (default: the registry default)
    device                "auto" | "cpu" | "cuda"           execution provider of the ORT engine
    threads               intra-op threads (CPU); null: every core this process may use
    lookupDraft           tokens drafted per forward pass by prompt-lookup decoding (0..7; 0 turns it off;
                          default 3): greedy completions that repeat text from the file decode faster
    kvSlots               KV caches kept (1..16, default 3): going back to a recent file or place is warm
    kvCacheMb             memory bound of those caches in MB (default 384; one slot is always kept)
    prewarm               pre-compute the prompt at the cursor while the user reads (default true): after
                          intarsia/didMoveCursor, didOpen, a pause in typing, a cold-start suggestion
    speculate             compute the suggestion that follows a shown one's acceptance while it is on screen, so
                          Tab, Tab, Tab is instant (default true)
    quickStartTokens      tokens of the file around the cursor in the short prompt that answers at a cold place
                          while the full one is computed (default 256; 0: always the full prompt; CPU only)
    adapter               LoRA adapter: an .onnx_adapter file or a peft folder; null: none
    trainedAdapter        serve the adapter that `intarsia train` promoted for this workspace (default true;
                          an explicit `adapter` wins); a new promotion or a rollback is picked up between requests
    fimAdapter            apply the model's shipped fill-in-the-middle adapter (default true; the default model
                          ships one); false: the plain model. A trained adapter, which continues it, replaces it
    remoteEndpoint        OpenAI-compatible server URL (engine "remote")
    remoteModel           model name sent to the remote server
    fimFormat             override the fill-in-the-middle format (default: from the model)
    generateFunctionMode  how intarsia.generateFunction asks the model for a body (core.function_prompts):
                          "auto" (default: per model, what benchmarks/generate_function.py measured best) |
                          "fim" (the fill-in-the-middle body slot) | "chat" (the model's chat template, base
                          model) | "chat+adapter" (chat template, served adapter on); other languages than
                          Python always use "fim"
    generateFunctionVerify  run the body against the docstring's examples in the sandbox and, when it fails them,
                          sample more bodies and apply the first that passes (default true; Python only;
                          core.verification)
    generateFunctionBudgetS  seconds for those further bodies (0..600, default 20; 0: judge the greedy body only)
    maxTokens             upper bound of new tokens per completion (1..2048)
    debounceMs            the longest wait before starting a completion (0..2000); the wait adapts to typing
    multiline             "auto" (the grammar decides) | "always" (blocks where a line would do) | "never"
    promptBudgetTokens    tokens for the whole prompt: repository context + current file (256..32768)
    contextBudgetTokens   tokens of it for snippets of other files (0 disables repository context)
    suffixBudgetTokens    tokens of text after the cursor in the prompt (recomputed on every keystroke);
                          null: 48 when the model runs on a CPU, 256 otherwise
    languages             LSP language ids to complete in: a list (empty = all) or {"*": true, "markdown": false}
    triggerCharacters     characters that trigger the textDocument/completion fallback (read at initialize)
    maxDocumentBytes      larger documents get no completions
    acceptanceLog         write the local acceptance log (shown / accepted / still in the code)
    acceptanceCheckSeconds  when to check that accepted code is still there (default [30, 300])
    test                  options of the "test" engine: {"table": {prefix end: completion}, "tokenDelayMs",
                          "loadDelayMs"}
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from intarsia.model.factory import EngineSpec
from intarsia.model.lookup import DEFAULT_DRAFT, DRAFT_ROWS
from intarsia.server.core.function_prompts import AUTO, MODES as FUNCTION_MODES
from intarsia.server.core.prompt import PromptBudget
from intarsia.server.core.verification import DEFAULT_BUDGET_S, MAX_BUDGET_S, VerifyOptions

_SERVED = PromptBudget()

ENGINES = ("ort", "remote", "test")
DEVICES = ("auto", "cpu", "cuda")
MULTILINE = ("auto", "always", "never")

# Settings that point at code, files or endpoints: never taken from a workspace/configuration answer (see
# `without_workspace_unsafe`).
WORKSPACE_UNSAFE = frozenset({"model", "adapter", "remote_endpoint"})

# Settings whose change needs the engine to be loaded again.
ENGINE_FIELDS = frozenset({"engine", "model", "device", "threads", "lookup_draft", "kv_slots", "kv_cache_mb",
                           "adapter", "trained_adapter",
                           "fim_adapter",
                           "remote_endpoint", "remote_model",
                           "fim_format", "test_table", "test_token_delay_ms", "test_load_delay_ms"})


@dataclass(frozen=True)
class Settings:
    engine: str = "ort"
    model: Optional[str] = None
    device: str = "auto"
    threads: Optional[int] = None
    lookup_draft: int = DEFAULT_DRAFT
    kv_slots: int = 3
    kv_cache_mb: int = 384
    prewarm: bool = True
    speculate: bool = True
    quick_start_tokens: int = 256
    adapter: Optional[str] = None
    trained_adapter: bool = True
    fim_adapter: bool = True
    remote_endpoint: Optional[str] = None
    remote_model: Optional[str] = None
    fim_format: Optional[str] = None
    generate_function_mode: str = AUTO
    generate_function_verify: bool = True
    generate_function_budget_s: float = DEFAULT_BUDGET_S
    max_tokens: int = 128
    debounce_ms: int = 100
    multiline: str = "auto"
    prompt_budget_tokens: int = _SERVED.prompt
    context_budget_tokens: int = _SERVED.context
    suffix_budget_tokens: Optional[int] = None  # None: PromptBudget.served(device).suffix
    # Empty: every language. Otherwise the enabled LSP language ids ("*" enables all but `languages_disabled`).
    languages: tuple[str, ...] = ()
    languages_disabled: tuple[str, ...] = ()
    trigger_characters: tuple[str, ...] = (".", "(", "[")
    max_document_bytes: int = 1_000_000
    acceptance_log: bool = True
    acceptance_check_seconds: tuple[float, ...] = (30.0, 300.0)
    test_table: tuple[tuple[str, str], ...] = ()
    test_token_delay_ms: float = 0.0
    test_load_delay_ms: float = 0.0

    def language_enabled(self, language_id: Optional[str]) -> bool:
        lid = (language_id or "").lower()
        if lid in self.languages_disabled:
            return False
        if not self.languages or "*" in self.languages:
            return True
        return lid in self.languages

    def budget(self, device: str) -> "PromptBudget":
        """The prompt budget for an engine running on `device` (its `provider`): the one typed budget training
        renders and judges with too (`PromptBudget.served`, when these settings are the defaults)."""
        suffix = self.suffix_budget_tokens
        if suffix is None:
            suffix = PromptBudget.served(device).suffix
        return PromptBudget(prompt=self.prompt_budget_tokens, context=self.context_budget_tokens, suffix=suffix)

    def verify_options(self) -> VerifyOptions:
        """How generateFunction judges bodies by their docstring's examples (core.verification)."""
        return VerifyOptions(enabled=self.generate_function_verify, budget_s=self.generate_function_budget_s)

    def engine_spec(self, workspace: Optional[str]) -> EngineSpec:
        """What `model.factory.open_engine` opens for these settings (the server never builds a model)."""
        # KV slots sized for a full prompt and its longest generation (a longer request gets a longer slot).
        slot_length = -(-(self.prompt_budget_tokens + max(self.max_tokens, 256)) // 512) * 512
        return EngineSpec(kind=self.engine, model=self.model, device=self.device, threads=self.threads,
                          lookup_draft=self.lookup_draft, kv_slots=self.kv_slots, kv_cache_mb=self.kv_cache_mb,
                          max_length=slot_length, fim_format=self.fim_format, adapter=self.adapter,
                          workspace=workspace, trained_adapter=self.trained_adapter, fim_adapter=self.fim_adapter,
                          remote_endpoint=self.remote_endpoint, remote_model=self.remote_model,
                          test_table=self.test_table, test_token_delay_ms=self.test_token_delay_ms,
                          test_load_delay_ms=self.test_load_delay_ms, build=False, warm_up=True)

    def engine_key(self) -> tuple:
        """Changes exactly when the engine has to be loaded again."""
        return tuple(getattr(self, f) for f in sorted(ENGINE_FIELDS))

    def to_json(self) -> dict:
        """The settings in the form clients send them (parse_settings(s.to_json()) == s)."""
        out: dict = {}
        for f in dataclasses.fields(self):
            if f.name.startswith("test_") or f.name.startswith("languages"):
                continue
            v = getattr(self, f.name)
            out[_camel(f.name)] = list(v) if isinstance(v, tuple) else v
        if self.languages_disabled:
            out["languages"] = {**{k: True for k in self.languages}, **{k: False for k in self.languages_disabled}}
        else:
            out["languages"] = list(self.languages)
        out["test"] = {"table": dict(self.test_table), "tokenDelayMs": self.test_token_delay_ms,
                       "loadDelayMs": self.test_load_delay_ms}
        return out


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _snake(name: str) -> str:
    out = []
    for ch in name:
        if ch.isupper():
            out.append("_" + ch.lower())
        else:
            out.append(ch)
    return "".join(out).replace("-", "_")


class _Bad(Exception):
    pass


def _opt_str(v: Any) -> Optional[str]:
    if v is None or v == "":
        return None
    if not isinstance(v, str):
        raise _Bad("expected a string")
    return v


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def conv(v: Any) -> str:
        if not isinstance(v, str) or v.lower() not in options:
            raise _Bad(f"expected one of {', '.join(options)}")
        return v.lower()

    return conv


def _int_range(lo: int, hi: int, *, optional: bool = False) -> Callable[[Any], Optional[int]]:
    def conv(v: Any) -> Optional[int]:
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
            raise _Bad(f"expected an integer between {lo} and {hi}")
        v = int(v)
        if not lo <= v <= hi:
            raise _Bad(f"expected an integer between {lo} and {hi}")
        return v

    return conv


def _float_range(lo: float, hi: float) -> Callable[[Any], float]:
    def conv(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi or not math.isfinite(v):
            raise _Bad(f"expected a number between {lo:g} and {hi:g}")  # (compared first: 10**400 is no float)
        return float(v)

    return conv


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise _Bad("expected true or false")
    return v


def _str_list(v: Any) -> tuple[str, ...]:
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
        raise _Bad("expected a list of strings")
    return tuple(v)


def _triggers(v: Any) -> tuple[str, ...]:
    items = _str_list(v)
    if not all(len(x) == 1 for x in items):
        raise _Bad("expected a list of single characters")
    return items


def _check_seconds(v: Any) -> tuple[float, ...]:
    if not isinstance(v, (list, tuple)) or not v or len(v) > 4:
        raise _Bad("expected a list of 1 to 4 numbers of seconds")
    return tuple(_float_range(0.01, 86400)(x) for x in v)


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "engine": _choice(ENGINES),
    "model": _opt_str,
    "device": _choice(DEVICES),
    "threads": _int_range(1, 1024, optional=True),
    "lookup_draft": _int_range(0, DRAFT_ROWS - 1),
    "kv_slots": _int_range(1, 16),
    "kv_cache_mb": _int_range(0, 1 << 16),
    "prewarm": _bool,
    "speculate": _bool,
    "quick_start_tokens": _int_range(0, 4096),
    "adapter": _opt_str,
    "trained_adapter": _bool,
    "fim_adapter": _bool,
    "remote_endpoint": _opt_str,
    "remote_model": _opt_str,
    "fim_format": _opt_str,
    "generate_function_mode": _choice(FUNCTION_MODES),
    "generate_function_verify": _bool,
    "generate_function_budget_s": _float_range(0, MAX_BUDGET_S),
    "max_tokens": _int_range(1, 2048),
    "debounce_ms": _int_range(0, 2000),
    "multiline": _choice(MULTILINE),
    "prompt_budget_tokens": _int_range(256, 32768),
    "context_budget_tokens": _int_range(0, 16384),
    "suffix_budget_tokens": _int_range(0, 8192, optional=True),
    "trigger_characters": _triggers,
    "max_document_bytes": _int_range(1024, 1 << 30),
    "acceptance_log": _bool,
    "acceptance_check_seconds": _check_seconds,
}

_ALIASES = {
    "endpoint": "remote_endpoint",
    "multi_line": "multiline",
    "languages_enabled": "languages",
    "max_new_tokens": "max_tokens",
}


def _languages(v: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if isinstance(v, Mapping):
        on, off = [], []
        for k, enabled in v.items():
            if not isinstance(k, str) or not isinstance(enabled, bool):
                raise _Bad('expected {"language id": true|false, ...}')
            (on if enabled else off).append(k.lower())
        if off and not on:
            on = ["*"]
        return tuple(on), tuple(off)
    return tuple(x.lower() for x in _str_list(v)), ()


def _test_options(v: Any, changes: dict, warnings: list[str]) -> None:
    if not isinstance(v, Mapping):
        raise _Bad("expected an object")
    for key, val in v.items():
        k = _snake(str(key))
        try:
            if k == "table":
                if not isinstance(val, Mapping) or not all(isinstance(a, str) and isinstance(b, str)
                                                          for a, b in val.items()):
                    raise _Bad('expected {"end of prefix": "completion", ...}')
                changes["test_table"] = tuple(val.items())
            elif k == "token_delay_ms":
                changes["test_token_delay_ms"] = _float_range(0, 10_000)(val)
            elif k == "load_delay_ms":
                changes["test_load_delay_ms"] = _float_range(0, 600_000)(val)
            else:
                warnings.append(f"intarsia.test.{key}: unknown setting (ignored)")
        except _Bad as e:
            warnings.append(f"intarsia.test.{key}: {e}; keeping the previous value")


def unwrap(raw: Any) -> Any:
    """The "intarsia" section of a settings object, which clients nest to various depths."""
    while isinstance(raw, Mapping) and "intarsia" in raw and isinstance(raw["intarsia"], Mapping):
        raw = raw["intarsia"]
    return raw


def _shown(value: Any) -> str:
    """A short, safe rendering of a client's value for a warning (any size, any nesting)."""
    try:
        text = repr(value) if not isinstance(value, str) else value
    except Exception:  # (RecursionError on deeply nested values)
        text = f"<{type(value).__name__}>"
    return text if len(text) < 60 else text[:57] + "..."


def without_workspace_unsafe(raw: Any) -> tuple[Any, list[str]]:
    """`raw` (a workspace/configuration answer) without the settings that point at code, files or endpoints,
    and the names dropped. Many clients answer that request from files inside the project (a repository can
    ship them), so those settings are taken only from initializationOptions and didChangeConfiguration, which
    our editor clients fill from the user's own configuration (VS Code: restricted in untrusted workspaces)."""
    raw = unwrap(raw)
    if not isinstance(raw, Mapping):
        return raw, []
    kept, dropped = {}, []
    for key, value in raw.items():
        name = _ALIASES.get(_snake(str(key)), _snake(str(key)))
        if name in WORKSPACE_UNSAFE:
            if value is not None:
                dropped.append(str(key))
        else:
            kept[key] = value
    return kept, dropped


def parse_settings(raw: Any, base: Settings = Settings()) -> tuple[Settings, list[str]]:
    """`base` updated with the values in `raw`, and a warning for each value that was ignored."""
    warnings: list[str] = []
    raw = unwrap(raw)
    if raw is None:
        return base, warnings
    if not isinstance(raw, Mapping):
        return base, [f"intarsia settings: expected an object, got {type(raw).__name__}; ignored"]
    changes: dict[str, Any] = {}
    for key, value in raw.items():
        name = _snake(str(key))
        name = _ALIASES.get(name, name)
        try:
            if name == "languages":
                changes["languages"], changes["languages_disabled"] = _languages(value)
            elif name == "test":
                _test_options(value, changes, warnings)
            elif name in _CONVERTERS:
                changes[name] = _CONVERTERS[name](value)
            else:
                warnings.append(f"intarsia.{_shown(key)}: unknown setting (ignored)")
        except _Bad as e:
            warnings.append(f"intarsia.{_shown(key)} = {_shown(value)}: {e}; keeping {getattr(base, name, None)!r}")
        except Exception as e:  # a value no converter foresaw (nesting, sizes): a warning, never a failure
            warnings.append(f"intarsia.{_shown(key)}: unusable value ({type(e).__name__}); keeping "
                            f"{getattr(base, name, None)!r}")
    settings = dataclasses.replace(base, **changes)
    if settings.engine == "remote" and not settings.remote_endpoint:
        warnings.append("intarsia.engine is 'remote' but intarsia.remoteEndpoint is not set")
    if settings.context_budget_tokens >= settings.prompt_budget_tokens:
        warnings.append(
            f"intarsia.contextBudgetTokens ({settings.context_budget_tokens}) must be below promptBudgetTokens "
            f"({settings.prompt_budget_tokens}); using {settings.prompt_budget_tokens // 2}")
        settings = dataclasses.replace(settings, context_budget_tokens=settings.prompt_budget_tokens // 2)
    return settings, warnings


__all__ = ["Settings", "parse_settings", "unwrap", "without_workspace_unsafe", "WORKSPACE_UNSAFE", "ENGINE_FIELDS",
           "ENGINES", "DEVICES", "MULTILINE", "FUNCTION_MODES"]
