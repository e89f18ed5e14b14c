"""Errors of the model layer: each carries a one-line message fit for a user."""

from __future__ import annotations


class IntarsiaError(Exception):
    """Base class: the message is shown to the user as one line, and the CLI exits non-zero."""


class UnknownModelError(IntarsiaError):
    pass


class ModelNotFoundError(IntarsiaError):
    pass


class IntegrityError(IntarsiaError):
    """A downloaded or assembled file does not have the pinned size or sha256."""


class CorruptModelError(IntarsiaError):
    """A model file cannot be parsed (truncated or not a GGUF/safetensors/ONNX file)."""


class FimFormatError(IntarsiaError):
    """The tokenizer lacks the special tokens of the requested fill-in-the-middle format."""


class EngineError(IntarsiaError):
    pass


class BuildError(IntarsiaError):
    pass


class UntrustedModelError(IntarsiaError):
    """A model or adapter folder would make a runtime run code (a shared library its config names, a pointer,
    the folder's own Python, a pickle); see `model.trust`."""


class ConfigError(IntarsiaError):
    """The user's configuration file (`model.trust.config_path`) cannot be read."""
