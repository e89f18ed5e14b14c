"""Build a servable ONNX Runtime model folder from any model source, with a manifest.

Default path for a GGUF source (`precision="exact"`): GGUF → fp32 Hugging Face folder (transformers) →
onnxruntime-genai builder fp32 graph → `transcode` refills every matrix with the GGUF's own quantized blocks
(no second quantization) → `add_lora_inputs` adds run-time LoRA branches. On CUDA, `exact` is the builder's fp16
CUDA graph of that same exact fp32 folder, checked tensor by tensor to be gguf's dequantization rounded once to
fp16 (`_exact_fp16`). Other precisions call the builder directly (`int4`, `int8`, `fp32` on CPU; `fp16`, `int4`
on CUDA; the builder's int4 is a second, lossy quantization).

Each built folder carries `intarsia_manifest.json`: source hashes, precision, execution provider, FIM format,
builder and runtime versions, the transcoding scheme per tensor class, and the sha256 of the config files it wrote
(`files`: `model.trust` refuses the folder once one changed). `build_key` summarises the inputs;
a later run rebuilds only when it changed.

Every CPU build's LM head returns logits for the last few positions of a call (`lookup.add_draft_logits`),
which prompt-lookup decoding needs to verify drafted tokens. It is a cheap edit of the graph file: a folder built
before it existed gets it in place (manifest `logits_rows`) instead of a rebuild.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

from . import shipped
from .cache import atomic_dir, clean_stale_parts, models_dir, sha256_file, write_json_atomic
from .convert import check_gguf_header, gguf_to_hf
from .errors import BuildError, FimFormatError, ModelNotFoundError
from .fetch import fetch
from .fim import FimFormat, detect_format, get_format
from .lookup import add_draft_logits
from .lora import add_lora_inputs
from .registry import ModelSource, resolve_source
from .transcode import fp16_report, fp16_scheme, transcode, verify
from .trust import MANIFEST, check_hf_folder, check_onnx_folder, config_digests

log = logging.getLogger(__name__)

MANIFEST_VERSION = 2
# Builder options every build uses. prune_lm_head: logits only for the last prompt position (a 500-token
# prefill no longer multiplies 500 hidden states by the 151,936-row output matrix; same tokens).
BUILDER_EXTRA = {"prune_lm_head": "true"}
PRECISIONS = ("exact", "int4", "int8", "fp32", "fp16")
PROVIDERS = ("cpu", "cuda")


@dataclass(frozen=True)
class BuildOptions:
    precision: str = "exact"
    provider: str = "cpu"
    # MatMulNBits accuracy level: 4 = int8 activations (as llama.cpp's q8 dot products), 0/1 = fp32.
    accuracy_level: int = 4
    lora_inputs: bool = True

    def validate(self, source: ModelSource) -> "BuildOptions":
        if self.precision not in PRECISIONS:
            raise BuildError(f"unknown precision '{self.precision}' (choose from {', '.join(PRECISIONS)})")
        if self.provider not in PROVIDERS:
            raise BuildError(f"unknown execution provider '{self.provider}' (choose cpu or cuda)")
        if self.precision == "exact" and source.kind not in ("registry", "gguf"):
            raise BuildError("precision 'exact' needs a GGUF source; use fp32, int8 or int4 for a Hugging Face folder")
        if self.precision == "fp16" and self.provider != "cuda":
            raise BuildError("fp16 is for the cuda provider; the CPU uses exact, fp32, int8 or int4")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise BuildError(f"accuracy level must be 0-4, not {self.accuracy_level}")
        return self

    @property
    def variant(self) -> str:
        v = f"{self.precision}-{self.provider}"
        if self.precision in ("exact", "int4", "int8") and self.provider == "cpu":
            v += f"-acc{self.accuracy_level}"
        return v


@dataclass(frozen=True)
class BuiltModel:
    path: Path
    manifest: dict
    # The shipped fill-in-the-middle adapter (model.shipped) exported for this build, when the source has one
    # and it was asked for: served at run time as the default adapter.
    fim_adapter: Optional[Path] = None

    @property
    def fim_format(self) -> FimFormat:
        return get_format(self.manifest["fim_format"])


def versions() -> dict:
    """Versions that change what a build produces (read from package metadata: no heavy imports)."""
    from importlib.metadata import PackageNotFoundError, version

    def v(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "not installed"

    return {
        "intarsia": v("intarsia"),
        "onnxruntime": v("onnxruntime"),
        "onnxruntime_genai": v("onnxruntime-genai"),
        "transformers": v("transformers"),
        "gguf": v("gguf"),
        "manifest": MANIFEST_VERSION,
    }


def _source_identity(source: ModelSource, gguf: Optional[Path]) -> dict:
    if source.kind == "registry":
        return {"kind": "registry", "name": source.name, "gguf_sha256": source.spec.gguf_sha256}
    if source.kind == "gguf":
        return {"kind": "gguf", "path": str(source.path.resolve()), "gguf_sha256": sha256_file(source.path)}
    if source.kind == "hf":
        h = hashlib.sha256()
        for p in sorted(source.path.iterdir()):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.name}:{st.st_size}:{int(st.st_mtime)}".encode())
        return {"kind": "hf", "path": str(source.path.resolve()), "files_digest": h.hexdigest()}
    return {"kind": source.kind, "id": source.hub_id or source.name}


def build_key(identity: dict, options: BuildOptions, vers: dict) -> str:
    blob = json.dumps({"source": identity, "options": asdict(options), "versions": vers}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def read_manifest(model_dir: Path) -> Optional[dict]:
    p = Path(model_dir) / MANIFEST
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def built_dir(source: ModelSource, options: BuildOptions) -> Path:
    return models_dir() / source.cache_name / options.variant


def tokenizer_lookup(model_dir: Path):
    from tokenizers import Tokenizer

    tok_path = Path(model_dir) / "tokenizer.json"
    if not tok_path.exists():
        raise ModelNotFoundError(f"{model_dir} has no tokenizer.json")
    return Tokenizer.from_file(str(tok_path)).token_to_id


def check_fim(model_dir: Path, fmt_name: Optional[str], model_name: str) -> FimFormat:
    """The FIM format to use, verified against the tokenizer (raises FimFormatError)."""
    lookup = tokenizer_lookup(model_dir)
    if fmt_name:
        fmt = get_format(fmt_name)
        fmt.check_tokenizer(lookup, model_name=model_name)
        return fmt
    try:
        return detect_format(lookup)
    except FimFormatError:
        raise FimFormatError(
            f"the tokenizer of {model_name} has no fill-in-the-middle tokens of any known format"
        ) from None


def run_builder(hf_dir: Path, out_dir: Path, precision: str, provider: str, extra: dict) -> None:
    # The builder loads the folder with transformers (trust_remote_code off: it is never given hf_remote).
    check_hf_folder(hf_dir)
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out_dir),
           "-p", precision, "-e", provider, "-c", str(out_dir) + ".cache"]
    if extra:
        cmd += ["--extra_options", *[f"{k}={v}" for k, v in extra.items()]]
    log.info("running the onnxruntime-genai builder: %s %s", precision, provider)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    shutil.rmtree(str(out_dir) + ".cache", ignore_errors=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
        raise BuildError(f"the onnxruntime-genai builder failed ({precision}, {provider}):\n{tail}")


def hf_folder_for(source: ModelSource, gguf: Path, *, progress: bool = True, check: bool = True) -> Path:
    """The fp32 Hugging Face folder of a GGUF source, cached beside its built models."""
    hf_dir = models_dir() / source.cache_name / "hf"
    marker = hf_dir / "intarsia_source.json"
    want = {"gguf_sha256": sha256_file(gguf) if source.kind == "gguf" else source.spec.gguf_sha256}
    if marker.exists():
        try:
            if json.loads(marker.read_text()) == want:
                return hf_dir
        except (OSError, json.JSONDecodeError):
            pass
    gguf_to_hf(gguf, hf_dir, progress=progress, check=check)
    write_json_atomic(marker, want)
    return hf_dir


def resolve_gguf(source: ModelSource, *, progress: bool = True) -> Optional[Path]:
    if source.kind == "registry":
        return fetch(source.spec, progress=progress)
    if source.kind == "gguf":
        return source.path
    return None


def build(
    source: ModelSource | str | None = None,
    options: BuildOptions = BuildOptions(),
    *,
    force: bool = False,
    progress: bool = True,
    fim_format: Optional[str] = None,
    fim_adapter: bool = True,
) -> BuiltModel:
    """Return a built model folder for `source`, building it only if missing or out of date. With `fim_adapter`
    (default) the source's shipped fill-in-the-middle adapter is exported for the build (see `with_fim_adapter`)."""
    if not isinstance(source, ModelSource):
        source = resolve_source(source)
    built = _build(source, options, force=force, progress=progress, fim_format=fim_format)
    return with_fim_adapter(source, built) if fim_adapter else built


def with_fim_adapter(source: ModelSource, built: BuiltModel) -> BuiltModel:
    """`built` with its `fim_adapter` set: the shipped adapter of `source` (model.shipped) exported for this
    graph (once; kept in `<built>/adapters/`). Unchanged when the source ships none or the graph has no LoRA
    inputs. A damaged adapter file raises ShippedAdapterError (a clear message; the plain model is still there:
    turn the adapter off)."""
    adapter = shipped.shipped_for(source)  # (looked up at call time: tests ship a tiny adapter)
    if adapter is None:
        return built
    if not built.manifest.get("lora_inputs"):
        log.warning("%s has no LoRA inputs: the shipped adapter %s cannot be applied (rebuild with --force)",
                    built.path, adapter.name)
        return built
    return BuiltModel(built.path, built.manifest, shipped.onnx_adapter_path(adapter, built.path))


def _for_source(source: ModelSource, options: BuildOptions) -> BuildOptions:
    """`exact` needs a GGUF; a Hugging Face folder's weights are exported as they are (fp32 on the CPU, fp16 on
    CUDA)."""
    if source.kind == "hf" and options.precision == "exact":
        return replace(options, precision="fp16" if options.provider == "cuda" else "fp32")
    return options


def _build(source: ModelSource, options: BuildOptions, *, force: bool, progress: bool,
           fim_format: Optional[str]) -> BuiltModel:
    if source.kind == "onnx":
        check_onnx_folder(source.path)
        manifest = read_manifest(source.path) or {}
        fmt = check_fim(source.path, fim_format or manifest.get("fim_format"), source.name)
        return BuiltModel(source.path, {**manifest, "fim_format": fmt.name})
    if source.kind == "hub":
        raise ModelNotFoundError(
            f"'{source.hub_id}' looks like a hub id, but this machine reaches no model hub: download the model "
            "folder elsewhere and give its path"
        )
    options = _for_source(source, options)
    options.validate(source)

    gguf = resolve_gguf(source, progress=progress)
    if gguf is not None:
        check_gguf_header(gguf, deep=False)
    identity = _source_identity(source, gguf)
    vers = versions()
    key = build_key(identity, options, vers)
    out = built_dir(source, options)
    clean_stale_parts(out.parent)
    existing = read_manifest(out)
    if existing and existing.get("build_key") == key and not force and (out / "model.onnx").exists():
        return BuiltModel(out, _with_draft_logits(out, existing))

    t0 = time.perf_counter()
    if gguf is not None:
        check_gguf_header(gguf)
    hf_dir = hf_folder_for(source, gguf, progress=progress, check=False) if gguf is not None else source.path
    fmt_name = fim_format or (source.spec.fim_format if source.spec else None)
    fmt = check_fim(hf_dir, fmt_name, source.name)

    scheme: dict = {}
    transcode_report = None
    transcode_json: Optional[dict] = None
    with atomic_dir(out) as tmp:
        if options.precision == "exact" and options.provider == "cuda":
            scheme, transcode_json = _exact_fp16(hf_dir, gguf, tmp)
        elif options.precision == "exact":
            fp32_dir = out.parent / f".{out.name}.fp32.part"
            shutil.rmtree(fp32_dir, ignore_errors=True)
            try:
                run_builder(hf_dir, fp32_dir, "fp32", "cpu", dict(BUILDER_EXTRA))
                transcode_report = transcode(fp32_dir, gguf, tmp, accuracy_level=options.accuracy_level,
                                             progress=progress)
            finally:
                shutil.rmtree(fp32_dir, ignore_errors=True)
            scheme = transcode_report.by_class()
        else:
            extra: dict = dict(BUILDER_EXTRA)
            if options.precision in ("int4", "int8"):
                extra["int4_accuracy_level"] = options.accuracy_level
            run_builder(hf_dir, tmp, options.precision, options.provider, extra)
            scheme = {"all_matmuls": f"builder {options.precision} ({options.provider})"}
        # CPU builds only: the CUDA path (CUDA graphs, IO binding) has not been measured with it yet.
        logits_rows: Optional[int] = 1
        if options.provider == "cpu":
            logits_rows = add_draft_logits(tmp / "model.onnx")
        lora_info = None
        if options.lora_inputs:
            lora_info = add_lora_inputs(tmp)
        manifest = {
            "name": source.name,
            "source": identity,
            "precision": options.precision,
            "execution_provider": options.provider,
            "accuracy_level": options.accuracy_level,
            "fim_format": fmt.name,
            "scheme": scheme,
            "lora_inputs": bool(lora_info),
            "builder_options": dict(BUILDER_EXTRA),
            "logits_rows": logits_rows,
            "versions": vers,
            "build_key": key,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "build_seconds": round(time.perf_counter() - t0, 1),
            "size_bytes": sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file()),
            # sha256 of the config files written here (genai_config.json first): model.trust refuses the folder
            # once one of them changes.
            "files": config_digests(tmp),
        }
        if transcode_report is not None:
            manifest["transcode"] = transcode_report.to_json()
        elif transcode_json is not None:
            manifest["transcode"] = transcode_json
        write_json_atomic(tmp / MANIFEST, manifest)
    return BuiltModel(out, manifest)


def _exact_fp16(hf_dir: Path, gguf: Path, out: Path) -> tuple[dict, dict]:
    """The CUDA form of `exact`: the builder's fp16 CUDA graph of the folder `convert.gguf_to_hf` dequantized
    from `gguf` (fp32, exact), so every weight is gguf's dequantization rounded once to fp16, and nothing else.
    `transcode.verify` checks that tensor by tensor (a weight off by one fp16 step fails the build); returns
    (scheme per tensor class, the manifest's report)."""
    run_builder(hf_dir, out, "fp16", "cuda", dict(BUILDER_EXTRA))
    checks = verify(out, gguf)
    bad = [c for c in checks if not c.exact]
    if bad:
        listed = ", ".join(f"{c.onnx_name or '+'.join(c.gguf_names)} ({c.op}, {c.max_abs_error:.3g})" for c in bad[:5])
        raise BuildError(f"the fp16 CUDA graph is not gguf's dequantization rounded once: {listed}"
                         + (f" and {len(bad) - 5} more" if len(bad) > 5 else ""))
    if not any(c.dtype == "float16" for c in checks):
        raise BuildError("the builder's CUDA graph holds no fp16 weights to check")
    log.info("fp16 CUDA graph: %d weights are gguf's dequantization rounded once (largest rounding %.3g)",
             len(checks), max(c.rounding_error for c in checks))
    return fp16_scheme(checks), fp16_report(checks)


def _with_draft_logits(model_dir: Path, manifest: dict) -> dict:
    """Give a folder built before `add_draft_logits` existed its multi-position LM head, in place (the graph
    file is rewritten atomically, the weights are not touched); returns the updated manifest."""
    if "logits_rows" in manifest or manifest.get("execution_provider", "cpu") != "cpu":
        return manifest
    try:
        rows = add_draft_logits(model_dir / "model.onnx")
    except (BuildError, OSError) as e:
        log.warning("%s keeps its one-position LM head (no prompt-lookup decoding): %s", model_dir, e)
        rows = 1
    manifest = {**manifest, "logits_rows": rows}
    try:
        write_json_atomic(model_dir / MANIFEST, manifest)
    except OSError as e:
        log.warning("cannot update %s: %s", model_dir / MANIFEST, e)
    log.info("%s: LM head now returns logits for the last %d positions", model_dir, rows)
    return manifest


def find_built(source: ModelSource, options: BuildOptions = BuildOptions()) -> Optional[BuiltModel]:
    """An already built folder for `source` (no building, no download), or None. Its `fim_adapter` is not set
    (see `with_fim_adapter`)."""
    if source.kind == "onnx":
        check_onnx_folder(source.path)
        return BuiltModel(source.path, read_manifest(source.path) or {})
    options = _for_source(source, options)
    out = built_dir(source, options)
    m = read_manifest(out)
    if m and (out / "model.onnx").exists():
        return BuiltModel(out, _with_draft_logits(out, m))
    return None
