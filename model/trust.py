"""Model and adapter folders are data, never code.

A model folder reaches Intarsia from places nobody vets: `intarsia complete --model FOLDER`, and the `model`
setting of `intarsia serve`, which the editor sends (workspace/didChangeConfiguration) and a repository can carry
in its `.vscode/settings.json`. Opening a repository must not run code from it. Yet the runtimes behind the
engines run code that a folder's files name: onnxruntime-genai dlopens the shared library genai_config.json names
in `session_options.custom_ops_library` (its constructor runs at once, inside the server), execution-provider
options name plugin and backend libraries or raw function pointers, transformers imports a folder's own Python
when `auto_map` meets trust_remote_code, and unpickling `pytorch_model.bin` / `adapter_model.bin` runs whatever
the pickle says.

So every folder is checked before anything loads it, and refused with one line that names the file, the key and
the way out:

- `check_onnx_folder` (before any onnxruntime-genai load: `OrtEngine`, and where a user-given ONNX folder is
  accepted as a model): genai_config.json may name no library, pointer or file to write, at any depth. A folder
  Intarsia built records the sha256 of its config files in its manifest (`config_digests`); a changed file is
  refused. A folder without a manifest is accepted, with a warning, when it passes the same check.
- `check_hf_folder`: no `auto_map` (the model would need its own Python), and safetensors weights, not pickles
  only. The loaders are also called with trust_remote_code=False and use_safetensors=True.
- `check_peft_folder`: adapter_model.safetensors, never adapter_model.bin alone.

The one way to let a model load a library is the user's own configuration file (`config_path`), which no
editor message and no workspace file reaches: `[trust] custom_ops_libraries = ["/abs/path/libfoo.so"]`, matched
by resolved absolute path. The manifest digests are an integrity record of Intarsia's own builds, not a
signature (a folder can forge them), so the library check runs on every folder, built here or not.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from .cache import sha256_file
from .errors import ConfigError, CorruptModelError, ModelNotFoundError, UntrustedModelError

log = logging.getLogger(__name__)

GENAI_CONFIG = "genai_config.json"
MANIFEST = "intarsia_manifest.json"
# The small config files a build writes whose sha256 its manifest records ("files"). genai_config.json is the one
# that can make onnxruntime-genai load code; the tokenizer's configs are recorded so that the whole configuration
# of a built folder is what was built. (tokenizer.json is data for the tokenizer and large: not hashed per load.)
CONFIG_FILES = ("genai_config.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                "added_tokens.json")

# ---- what in a genai_config.json makes onnxruntime-genai (0.18) / onnxruntime (1.32) load or call code
#
# Checked against onnxruntime-genai's config parser (src/config.cpp: SessionOptions_Element,
# ProviderOptions_Element), its session setup (src/models/model.cpp: CreateSessionOptionsFromConfig) and the
# strings of the installed libonnxruntime-genai.so:
#  - `custom_ops_library`, in the session_options of the decoder and of every other part (encoder, vision,
#    speech, embedding, joiner, vad, mtp, draft, pipeline stages, which inherit the decoder's): passed to
#    RegisterCustomOpsLibrary, i.e. dlopen; a relative name resolves against the model folder. The attack.
#  - `provider_options`: one object per execution provider, handed to onnxruntime verbatim. Options that load
#    libraries: QNN `backend_path`, TensorRT / NvTensorRtRtx `trt_extra_plugin_lib_paths`, VitisAI
#    `config_file` (a vaip config that names passes to load). Intarsia serves on cpu or cuda only (OrtEngine
#    clears the providers and appends cuda or none), so options for any other provider are refused outright.
#  - raw pointers a provider calls or dereferences: CUDA / ROCm `gpu_external_alloc`, `gpu_external_free`,
#    `gpu_external_empty_cache`, `user_compute_stream`; WebGPU `dawnProcTable`, `webgpuInstance`,
#    `webgpuDevice`. Refused even when a library is allowed: an address is never data.
#  - `enable_profiling`: a path prefix the session writes its profile to, outside the folder. Refused.
#  - any other session_options key becomes an onnxruntime session config entry (AddConfigEntry). Of the entries
#    in onnxruntime 1.32's strings none loads a library, but some write a file where they say:
#    session.optimized_model_filepath (the whole graph, bytes the folder chooses: into site-packages as a .pth
#    file that is code), session.collect_node_memory_stats_to_file, ep.context_file_path, moe offload caches.
#    So an option (session or run options, provider options) whose key names a path, a file or a folder and
#    whose value is not a plain number or boolean is refused.
#  - not code: the file names of the model's parts (decoder/encoder/... `filename`, `config_filename`,
#    `adapter_filename`, `tokenizer_dir`, shared_initializers `data_file`), which onnxruntime-genai confines to
#    the folder (they are not options, so the path rule above leaves them alone).
#  - outside the config: `og.register_execution_provider_library` (an API call, not made here) and the
#    AMDGPU_EP_PATH / RYZENAI_EP_PATH environment variables (user level, like this module's config file).
# Catch-alls for keys of other versions: a key with a name part lib/library/plugin/..., and any string value
# that names a shared library or an executable (.so, .so.N, .dll, .dylib, .exe), need the allow-list too.
_LIBRARY_KEYS = {"custom_ops_library", "backend_path", "config_file", "trt_extra_plugin_lib_paths"}
_LIBRARY_PARTS = {"lib", "libs", "library", "libraries", "plugin", "plugins", "dll", "dlls", "dylib"}
_POINTER_KEYS = {"gpu_external_alloc", "gpu_external_free", "gpu_external_empty_cache", "user_compute_stream",
                 "dawnproctable", "webgpuinstance", "webgpudevice"}
_WRITE_KEYS = {"enable_profiling"}
_OPTION_OBJECTS = {"session_options", "run_options"}
_PATH_PARTS = {"path", "paths", "filepath", "file", "files", "filename", "dir", "directory", "folder", "root"}
_PLAIN_VALUE = re.compile(r"^(-?\d+(\.\d+)?|true|false)$", re.IGNORECASE)
_PROVIDERS = {"cpu", "cuda"}
_LIBRARY_VALUE = re.compile(r"\.(so(\.\d+)*|dll|dylib|exe)$", re.IGNORECASE)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


# --------------------------------------------------------------------------------------------------------------
# The user's configuration file
# --------------------------------------------------------------------------------------------------------------


def config_path() -> Path:
    """`$INTARSIA_CONFIG`, else `$XDG_CONFIG_HOME/intarsia/config.toml`, else `~/.config/intarsia/config.toml`."""
    env = os.environ.get("INTARSIA_CONFIG")
    if env:
        return Path(env).expanduser()
    xdg = os.path.expanduser(os.environ.get("XDG_CONFIG_HOME") or "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".config"  # XDG: a relative value is ignored
    return base / "intarsia" / "config.toml"


@dataclass(frozen=True)
class UserConfig:
    path: Path
    # Resolved absolute paths of the shared libraries a model's config may make onnxruntime-genai load.
    custom_ops_libraries: frozenset[str] = frozenset()


_TRUST_KEYS = ("custom_ops_libraries",)


def user_config() -> UserConfig:
    """The user's configuration (defaults when the file does not exist). Raises ConfigError naming the file when
    it cannot be read, is not TOML, or holds a [trust] key or value this version does not understand (a
    misspelt allow-list must not silently allow nothing)."""
    path = config_path()
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return UserConfig(path)
    except UnicodeDecodeError:
        raise ConfigError(f"the Intarsia configuration {path} is not UTF-8 text") from None
    except OSError as e:
        raise ConfigError(f"cannot read the Intarsia configuration {path}: {e.strerror or e}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"the Intarsia configuration {path} is not valid TOML: {e}") from None
    trust = raw.get("trust", {})
    if not isinstance(trust, dict):
        raise ConfigError(f"the Intarsia configuration {path}: 'trust' must be a table ([trust])")
    unknown = sorted(set(trust) - set(_TRUST_KEYS))
    if unknown:
        raise ConfigError(f"the Intarsia configuration {path} has an unknown key trust.{unknown[0]} "
                          f"(known: {', '.join(_TRUST_KEYS)})")
    libs = trust.get("custom_ops_libraries", [])
    if not isinstance(libs, list) or not all(isinstance(x, str) for x in libs):
        raise ConfigError(f"the Intarsia configuration {path}: trust.custom_ops_libraries must be a list of "
                          "absolute paths")
    resolved = set()
    for lib in libs:
        p = os.path.expanduser(lib)
        if not os.path.isabs(p):
            raise ConfigError(f"the Intarsia configuration {path}: trust.custom_ops_libraries entry {lib!r} is "
                              "not an absolute path")
        resolved.add(os.path.realpath(p))
    return UserConfig(path, frozenset(resolved))


# --------------------------------------------------------------------------------------------------------------
# ONNX Runtime folders
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FolderCheck:
    path: Path
    built_by_intarsia: bool  # its manifest records the sha256 of its config files and they match
    libraries: tuple[str, ...] = ()  # allowed libraries (resolved paths) its config makes onnxruntime-genai load


class _Obj(list):
    """A JSON object as its list of (key, value) pairs: duplicate keys are all seen, not only the last."""


def _walk(node: Any, where: str = "", options: bool = False) -> Iterator[tuple[str, Optional[str], Any, bool]]:
    """(path, key, value, inside session or run options) of every object member and array element (key None)
    under `node`."""
    if isinstance(node, _Obj):
        for k, v in node:
            p = f"{where}.{k}" if where else k
            yield p, k, v, options
            yield from _walk(v, p, options or k in _OPTION_OBJECTS)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            p = f"{where}[{i}]"
            yield p, None, v, options
            yield from _walk(v, p, options)


def _key_parts(key: str) -> set[str]:
    return {p for p in re.split(r"[^a-z0-9]+", key.lower()) if p}


def _names(value: Any) -> Optional[list[str]]:
    """The library names a library-naming key's value holds (None: a value that is not names)."""
    if value is None or value is False or value == "":
        return []
    if isinstance(value, str):
        return [s for s in (p.strip() for p in value.split(";")) if s]  # TensorRT lists paths with ';'
    if isinstance(value, list) and not isinstance(value, _Obj) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value if v.strip()]
    return None


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


_warned: set[str] = set()


def check_onnx_folder(path: Path | str) -> FolderCheck:
    """Refuse (UntrustedModelError, one line) an ONNX Runtime model folder whose genai_config.json would make
    onnxruntime-genai load or call code (see the list above) unless the user's configuration allows the
    library, whose genai_config.json lies outside it (a symlink), or whose config files differ from the sha256
    its Intarsia manifest records. Call it before every onnxruntime-genai load of the folder."""
    folder = Path(path)
    cfg = folder / GENAI_CONFIG
    if not cfg.is_file():
        raise ModelNotFoundError(f"no ONNX model in {folder} ({GENAI_CONFIG} is missing)")
    real_folder = folder.resolve()
    if cfg.is_symlink() and not _inside(cfg.resolve(), real_folder):
        raise UntrustedModelError(f"{cfg} is a link to {cfg.resolve()}, outside the model folder: copy the file "
                                  "into the folder")
    try:
        doc = json.loads(cfg.read_bytes().decode("utf-8"), object_pairs_hook=_Obj)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CorruptModelError(f"cannot read {cfg}: {' '.join(str(e).split())[:200]}") from None
    allowed = user_config()
    libraries = _check_genai_config(doc, cfg, real_folder, allowed)
    built = _check_manifest(folder)
    if built is None:
        key = str(real_folder)
        if key not in _warned:
            _warned.add(key)
            log.warning("%s was not built by Intarsia (no %s with the sha256 of its config files): loading it as "
                        "data, after checking that %s names no code", folder, MANIFEST, GENAI_CONFIG)
    for lib in libraries:
        if (key := f"{real_folder}:{lib}") not in _warned:
            _warned.add(key)
            log.warning("%s makes onnxruntime-genai load %s, allowed by %s", cfg, lib, allowed.path)
    return FolderCheck(folder, bool(built), tuple(libraries))


def _refuse_library(cfg: Path, where: str, name: str, resolved: str, allowed: UserConfig) -> UntrustedModelError:
    return UntrustedModelError(
        f"{cfg}: {where} names the shared library {name!r}, which onnxruntime-genai would load and run inside "
        f"Intarsia; a model folder is data, never code. If you trust that library, add \"{resolved}\" to "
        f"custom_ops_libraries under [trust] in {allowed.path}")


def _check_genai_config(doc: Any, cfg: Path, folder: Path, allowed: UserConfig) -> list[str]:
    libraries: list[str] = []
    named: set[str] = set()  # array elements already checked as the names of a library-naming key

    def need_allowed(where: str, name: str) -> None:
        # Resolved as onnxruntime-genai does: relative to the model folder, no "~" expansion.
        try:
            resolved = os.path.realpath(folder / name)
        except (ValueError, OSError):  # an embedded NUL, a name too long: not a library anyone allowed
            resolved = repr(name)
        if resolved not in allowed.custom_ops_libraries:
            raise _refuse_library(cfg, where, name, resolved, allowed)
        if resolved not in libraries:
            libraries.append(resolved)

    for where, key, value, in_options in _walk(doc):  # a member comes before its children
        if key is None:  # an array element
            if isinstance(value, str) and where not in named and _LIBRARY_VALUE.search(value.strip()):
                need_allowed(where, value.strip())
            continue
        k = key.lower()
        last = k.rsplit(".", 1)[-1]  # "ep.webgpuexecutionprovider.dawnProcTable"
        if last in _POINTER_KEYS:
            raise UntrustedModelError(
                f"{cfg}: {where} hands onnxruntime a raw memory address to call or use, which a model folder "
                "must never do; remove the key")
        if last in _WRITE_KEYS:
            raise UntrustedModelError(
                f"{cfg}: {where} makes onnxruntime write a profile file to a path the folder chooses; remove the "
                "key (profile with onnxruntime's own tools instead)")
        if k == "provider_options":
            for provider in _providers(value, cfg, where):
                if provider not in _PROVIDERS:
                    raise UntrustedModelError(
                        f"{cfg}: {where} configures the execution provider '{provider}', which Intarsia never "
                        "uses (it serves on cpu or cuda) and whose options can load libraries; remove it")
        if last in _LIBRARY_KEYS or _key_parts(k) & _LIBRARY_PARTS:
            names = _names(value)
            if names is None:
                raise UntrustedModelError(
                    f"{cfg}: {where} should name a library but holds {json.dumps(value)[:80]}; remove the key")
            for name in names:
                need_allowed(where, name)
            if isinstance(value, list):
                named.update(f"{where}[{i}]" for i in range(len(value)))
        elif isinstance(value, str) and _LIBRARY_VALUE.search(value.strip()):
            need_allowed(where, value.strip())
        elif (in_options and _key_parts(k) & _PATH_PARTS and isinstance(value, str) and value.strip()
                and not _PLAIN_VALUE.match(value.strip())):
            raise UntrustedModelError(
                f"{cfg}: {where} names a file for onnxruntime to read or write ({value.strip()[:80]!r}), which can "
                "reach outside the model folder; remove the key")
    return libraries


def _providers(value: Any, cfg: Path, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or isinstance(value, _Obj):
        raise UntrustedModelError(f"{cfg}: {where} is not a list of providers; remove it")
    out = []
    for entry in value:
        if not isinstance(entry, _Obj):
            raise UntrustedModelError(f"{cfg}: {where} is not a list of providers; remove it")
        for name, _ in entry:
            n = name.lower()
            if n.endswith("executionprovider"):
                n = n[: -len("executionprovider")]
            out.append(n)
    return out


def config_digests(folder: Path | str) -> dict[str, str]:
    """sha256 of the config files (`CONFIG_FILES`) in `folder`: what a build records in its manifest ("files")."""
    folder = Path(folder)
    return {name: sha256_file(folder / name) for name in CONFIG_FILES if (folder / name).is_file()}


def _check_manifest(folder: Path) -> Optional[bool]:
    """True when the folder's manifest records its config files' sha256 and they match, False when its manifest is
    from before digests were recorded, None without a manifest. A mismatch raises: nothing but a build writes
    those files."""
    p = folder / MANIFEST
    if not p.is_file():
        return None
    try:
        manifest = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CorruptModelError(f"cannot read {p}: {' '.join(str(e).split())[:200]}") from None
    recorded = manifest.get("files") if isinstance(manifest, dict) else None
    if not recorded:
        log.debug("%s records no config digests (built before they were recorded)", p)
        return False
    if not isinstance(recorded, dict) or GENAI_CONFIG not in recorded:
        raise UntrustedModelError(f"{p}: 'files' does not record {GENAI_CONFIG}; rebuild the model")
    for name, digest in sorted(recorded.items()):
        if Path(name).name != name or name in ("", ".", ".."):
            raise UntrustedModelError(f"{p}: 'files' names {name!r}, not a file of the folder; rebuild the model")
        f = folder / name
        actual = sha256_file(f) if f.is_file() else None
        if actual != digest:
            raise UntrustedModelError(
                f"{f} was {'removed' if actual is None else 'changed'} after Intarsia built {folder} (its sha256 is "
                f"not the one {MANIFEST} records): rebuild the model (intarsia model build --force), or delete "
                f"{MANIFEST} to load the folder as one Intarsia did not build")
    return True


# --------------------------------------------------------------------------------------------------------------
# Hugging Face and peft folders
# --------------------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CorruptModelError(f"cannot read {path}: {' '.join(str(e).split())[:200]}") from None


def check_hf_folder(path: Path | str) -> None:
    """Refuse (UntrustedModelError) a Hugging Face model folder that needs its own Python code (`auto_map` in
    config.json or tokenizer_config.json) or holds its weights only as pickles (*.bin, *.pt, *.pth, *.ckpt)."""
    folder = Path(path)
    for name in ("config.json", "tokenizer_config.json"):
        f = folder / name
        if f.is_file():
            data = _read_json(f)
            if isinstance(data, dict) and data.get("auto_map"):
                raise UntrustedModelError(
                    f"{f} has auto_map: the model needs Python code from its folder (trust_remote_code), and "
                    "Intarsia never runs a model folder's code; use a model transformers supports itself")
    try:
        files = sorted(p for p in folder.iterdir() if p.is_file())
    except OSError as e:
        raise ModelNotFoundError(f"cannot list {folder}: {e.strerror or e}") from None
    if any(p.suffix == ".safetensors" for p in files):
        return
    pickles = [p.name for p in files if p.suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        raise UntrustedModelError(
            f"{folder} holds its weights only as pickle files ({', '.join(pickles[:3])}), which can run code when "
            "loaded; Intarsia loads safetensors only: convert them where you trust them "
            "(model.save_pretrained(folder, safe_serialization=True))")


def check_peft_folder(path: Path | str) -> Path:
    """The adapter_model.safetensors of a peft adapter folder; refuses one whose weights are only a pickle
    (adapter_model.bin, …) with UntrustedModelError, and a folder without adapter_config.json or weights with
    ModelNotFoundError."""
    folder = Path(path)
    if not (folder / "adapter_config.json").is_file():
        raise ModelNotFoundError(f"{folder} is not a peft adapter folder (no adapter_config.json)")
    weights = folder / "adapter_model.safetensors"
    if weights.is_file():
        return weights
    try:
        pickles = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)
    except OSError:
        pickles = []
    if pickles:
        raise UntrustedModelError(
            f"{folder} holds its adapter only as {pickles[0]}, a pickle, which can run code when loaded; Intarsia "
            "reads adapter_model.safetensors only: re-save the adapter with safetensors (peft's save_pretrained "
            "writes it by default)")
    raise ModelNotFoundError(f"{folder}: no adapter_model.safetensors")
