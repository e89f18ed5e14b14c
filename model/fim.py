"""Fill-in-the-middle prompt formats: the one definition that training and serving both use.

A format renders (prefix, suffix) and optional repository context into the exact prompt string the model
was trained on; training appends the middle and the end token to the same string. `check_tokenizer`
verifies at load time that the tokenizer really has the format's special tokens, so a wrong template
fails loudly instead of silently producing nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Optional, Sequence

from .errors import FimFormatError

TokenLookup = Callable[[str], Optional[int]]


@dataclass(frozen=True)
class RepoFile:
    """A snippet of another file shown to the model as repository context."""

    path: str
    content: str


@dataclass(frozen=True)
class FimFormat:
    name: str
    prefix_token: str
    suffix_token: str
    middle_token: str
    end_tokens: tuple[str, ...]
    # "psm": prefix, suffix, middle (all formats here); the order of the sentinel tokens in the prompt.
    order: str = "psm"
    # Text put around the sentinels (CodeLlama puts spaces there).
    prefix_sep: str = ""
    suffix_sep: str = ""
    middle_sep: str = ""
    # Repository-level form: `repo_token` + name, then each file as `file_token` + path + newline + content.
    repo_token: Optional[str] = None
    file_token: Optional[str] = None
    # Formats without repository tokens render context files as comments with this line prefix.
    comment_header: str = "# {path}\n"
    # Alternative spellings of a sentinel in a tokenizer's vocabulary (SentencePiece's '▁' prefix).
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def special_tokens(self) -> tuple[str, ...]:
        toks = [self.prefix_token, self.suffix_token, self.middle_token, *self.end_tokens]
        if self.repo_token:
            toks.append(self.repo_token)
        if self.file_token:
            toks.append(self.file_token)
        return tuple(toks)

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Strings that end a middle: the end tokens plus any sentinel the model might emit by mistake."""
        extra = [self.prefix_token, self.suffix_token, self.middle_token]
        if self.file_token:
            extra.append(self.file_token)
        if self.repo_token:
            extra.append(self.repo_token)
        return tuple(dict.fromkeys([*self.end_tokens, *extra]))

    def render(
        self,
        prefix: str,
        suffix: str,
        *,
        repo_name: Optional[str] = None,
        context_files: Sequence[RepoFile] = (),
        path: Optional[str] = None,
    ) -> str:
        """The prompt whose continuation is the middle.

        With `context_files` (or a `repo_name`/`path`) the repository-level form is used: other files first,
        then the current file's path, then the FIM sentinels around the current file's prefix and suffix.
        """
        esc = self.escape
        prefix, suffix = esc(prefix), esc(suffix)
        repo_name = esc(repo_name) if repo_name is not None else None
        path = esc(path) if path is not None else None
        context_files = [RepoFile(esc(f.path), esc(f.content)) for f in context_files]
        core = (
            f"{self.prefix_token}{self.prefix_sep}{prefix}"
            f"{self.suffix_sep}{self.suffix_token}{suffix}"
            f"{self.middle_sep}{self.middle_token}"
        )
        if not context_files and repo_name is None and path is None:
            return core
        if self.file_token is None:
            # No repository tokens: show other files as commented blocks before the prefix.
            ctx = "".join(
                self.comment_header.format(path=f.path) + _ensure_newline(f.content) for f in context_files
            )
            return (
                f"{self.prefix_token}{self.prefix_sep}{ctx}{prefix}"
                f"{self.suffix_sep}{self.suffix_token}{suffix}"
                f"{self.middle_sep}{self.middle_token}"
            )
        parts = []
        if self.repo_token is not None:
            parts.append(f"{self.repo_token}{repo_name or 'repo'}\n")
        for f in context_files:
            parts.append(f"{self.file_token}{f.path}\n{_ensure_newline(f.content)}")
        if path is not None:
            parts.append(f"{self.file_token}{path}\n")
        return "".join(parts) + core

    def escape(self, text: str) -> str:
        """User text with any literal sentinel broken up (a zero-width space after its first character).

        A file that contains e.g. `<|fim_prefix|>` as text (this project's own fim.py does) would otherwise be
        tokenized as the special token and corrupt the prompt.
        """
        for tok in self._sentinels:
            if tok in text:
                text = text.replace(tok, tok[0] + "\u200b" + tok[1:])
        return text

    @property
    def _sentinels(self) -> tuple[str, ...]:
        names = [*self.special_tokens]
        for alts in self.aliases.values():
            names.extend(alts)
        return tuple(dict.fromkeys(names))

    def training_text(self, prompt: str, middle: str) -> str:
        """Prompt + middle + the first end token: what a training example's full text is."""
        return prompt + middle + self.end_tokens[0]

    def missing_tokens(self, lookup: TokenLookup) -> list[str]:
        missing = []
        for tok in self.special_tokens:
            names = (tok, *self.aliases.get(tok, ()))
            if not any(lookup(n) is not None for n in names):
                missing.append(tok)
        return missing

    def check_tokenizer(self, lookup: TokenLookup, *, model_name: str = "the model") -> None:
        """Raise FimFormatError unless every special token of the format is one token of the vocabulary."""
        missing = self.missing_tokens(lookup)
        if missing:
            raise FimFormatError(
                f"the tokenizer of {model_name} has no {', '.join(missing)} token(s): it cannot use the "
                f"'{self.name}' fill-in-the-middle format (choose another format or model)"
            )


def _ensure_newline(text: str) -> str:
    return text if text.endswith("\n") or not text else text + "\n"


QWEN25_CODER = FimFormat(
    name="qwen2.5-coder",
    prefix_token="<|fim_prefix|>",
    suffix_token="<|fim_suffix|>",
    middle_token="<|fim_middle|>",
    end_tokens=("<|endoftext|>",),
    repo_token="<|repo_name|>",
    file_token="<|file_sep|>",
)

STARCODER2 = FimFormat(
    name="starcoder2",
    prefix_token="<fim_prefix>",
    suffix_token="<fim_suffix>",
    middle_token="<fim_middle>",
    end_tokens=("<|endoftext|>",),
    repo_token="<repo_name>",
    file_token="<file_sep>",
)

STARCODER = FimFormat(
    name="starcoder",
    prefix_token="<fim_prefix>",
    suffix_token="<fim_suffix>",
    middle_token="<fim_middle>",
    end_tokens=("<|endoftext|>",),
    repo_token="<reponame>",
    file_token="<filename>",
)

DEEPSEEK_CODER = FimFormat(
    name="deepseek-coder",
    prefix_token="<｜fim▁begin｜>",
    suffix_token="<｜fim▁hole｜>",
    middle_token="<｜fim▁end｜>",
    end_tokens=("<｜end▁of▁sentence｜>", "<|EOT|>"),
)

CODELLAMA = FimFormat(
    name="codellama",
    prefix_token="<PRE>",
    suffix_token="<SUF>",
    middle_token="<MID>",
    end_tokens=("<EOT>",),
    prefix_sep=" ",
    suffix_sep=" ",
    middle_sep=" ",
    aliases={"<PRE>": ("▁<PRE>",), "<SUF>": ("▁<SUF>",), "<MID>": ("▁<MID>",), "<EOT>": ("▁<EOT>", "</s>")},
)

FORMATS: dict[str, FimFormat] = {
    f.name: f for f in (QWEN25_CODER, STARCODER2, STARCODER, DEEPSEEK_CODER, CODELLAMA)
}


def get_format(name: str) -> FimFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise FimFormatError(
            f"unknown fill-in-the-middle format '{name}' (known: {', '.join(sorted(FORMATS))})"
        ) from None


def detect_format(lookup: TokenLookup, candidates: Iterable[FimFormat] = FORMATS.values()) -> FimFormat:
    """The first known format whose special tokens the tokenizer has."""
    for fmt in candidates:
        if not fmt.missing_tokens(lookup):
            return fmt
    raise FimFormatError("the tokenizer has none of the known fill-in-the-middle formats' special tokens")
