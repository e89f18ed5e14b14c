"""Chat prompts rendered with the model's own chat template.

An instruct model answers best in the conversation format it was tuned on, and that format is data the model
carries: the GGUF's `tokenizer.chat_template`, which the conversion writes next to the tokenizer
(`chat_template.jinja`, or the `chat_template` key of `tokenizer_config.json`). Rather than writing the format
by hand (and getting one newline wrong for one model), prompts are rendered from that template with jinja2.

A template comes from a model folder, and model folders are data, never code (`model.trust`): it is rendered in
jinja2's immutable sandbox, which refuses attribute access to Python internals and any mutation, the way
transformers renders the same templates. A model without a template has no chat format: `ChatTemplateError`
says so instead of guessing one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, Sequence

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import EngineError

CHAT_TEMPLATE_FILE = "chat_template.jinja"
# Larger template files are refused: real ones are a few KB, and rendering is on the request path.
_MAX_TEMPLATE_BYTES = 256 << 10


class ChatTemplateError(EngineError):
    """The model has no usable chat template (none, unreadable, or one that fails to render)."""


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system" | "user" | "assistant"
    content: str

    def to_json(self) -> dict:
        return {"role": self.role, "content": self.content}


def read_chat_template(model_dir: Path | str) -> Optional[str]:
    """The chat template of the model in `model_dir` (Jinja source), or None when it has none.

    Looked for in `chat_template.jinja` (what transformers writes), then `tokenizer_config.json`'s
    `chat_template` (a string, or a list of named templates of which "default" is the chat one)."""
    folder = Path(model_dir)
    path = folder / CHAT_TEMPLATE_FILE
    if path.is_file() and not path.is_symlink():
        if path.stat().st_size > _MAX_TEMPLATE_BYTES:
            raise ChatTemplateError(f"{path} is larger than {_MAX_TEMPLATE_BYTES >> 10} KB: not a chat template")
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ChatTemplateError(f"cannot read {path}: {e}") from None
    cfg = folder / "tokenizer_config.json"
    if not cfg.is_file():
        return None
    try:
        value: Any = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
    except (OSError, ValueError, AttributeError) as e:
        raise ChatTemplateError(f"cannot read {cfg}: {e}") from None
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = named.get("default")
    return value if isinstance(value, str) and value.strip() else None


def _raise(message: str) -> None:
    raise ChatTemplateError(f"the chat template refused the conversation: {message}")


def _tojson(value: Any, indent: Optional[int] = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


@lru_cache(maxsize=8)
def _compiled(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    try:
        return env.from_string(template)
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"the model's chat template does not compile: {e}") from None


def render_chat(template: str, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True,
                **variables: Any) -> str:
    """The prompt text of `messages` in `template`'s format; with `add_generation_prompt` it ends where the
    assistant's answer starts. `variables` (bos_token, eos_token, ...) are passed to the template."""
    try:
        return _compiled(template).render(messages=[m.to_json() for m in messages],
                                          add_generation_prompt=add_generation_prompt, tools=None, **variables)
    except ChatTemplateError:
        raise
    except jinja2.TemplateError as e:  # (the sandbox's SecurityError is one)
        raise ChatTemplateError(f"the model's chat template failed: {e}") from None


__all__ = ["ChatMessage", "ChatTemplateError", "read_chat_template", "render_chat", "CHAT_TEMPLATE_FILE"]
