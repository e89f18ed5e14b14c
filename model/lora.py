"""LoRA adapters applied at run time in ONNX Runtime, never merged into the base weights.

The base graph's weights are exact transcodings of a quantized GGUF, so merging an adapter (which changes every
targeted weight) would force a new quantization. Instead `add_lora_inputs` gives every projection of the decoder a
low-rank side branch whose matrices are graph inputs:

    Y = X @ W  (+ bias)              becomes        Y = X @ W + (X @ A) @ B  (+ bias)

with A of shape [K, r] and B of shape [r, N], the rank r a symbolic dimension. Each A/B input also has a default
initializer of rank 0 ([K, 0] and [0, N]), so with no adapter active the branch adds zeros and the graph computes
exactly what it computed before. ONNX Runtime feeds an adapter's tensors by name when a `LoraAdapter` is active in
the run options; onnxruntime-genai does that through `og.Adapters` and `Generator.set_active_adapter`.

`export_adapter` turns a peft LoRA folder (adapter_config.json + adapter_model.safetensors) into an ONNX Runtime
adapter file (`.onnx_adapter`) whose tensor names are the graph's input names: a packed projection (qkv_proj,
gate_up_proj) gets one branch whose A is the concatenation of the modules' A matrices along the rank axis and whose
B is block-diagonal; peft's scaling (alpha/r, or alpha/sqrt(r) with rslora) is folded into B. A projection the
adapter does not touch is left out of the file, so its rank-0 default applies.

Using an adapter with onnxruntime-genai (one `og.Adapters` per `og.Model`):

    adapters = og.Adapters(model)
    adapters.load(str(path_to_onnx_adapter), "name")
    generator = og.Generator(model, params)
    generator.set_active_adapter(adapters, "name")   # before the first append_tokens
    generator.append_tokens(...)

A generator cannot drop or swap its adapter: switching adapters (or going back to the base model) means a new
generator, and a KV cache computed under one adapter is not valid under another.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .cache import atomic_path, sha256_file, write_json_atomic
from .errors import BuildError, EngineError
from .trust import check_peft_folder

log = logging.getLogger(__name__)

# peft `target_modules` names the graph can carry a LoRA branch for.
LORA_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

LORA_INFO_FILE = "intarsia_lora.json"
ADAPTER_SUFFIX = ".onnx_adapter"
INFO_FORMAT = 1
MANIFEST_FORMAT = 1

# Graph projection name -> (graph block, peft block, peft modules it packs along N in this order).
_PROJECTIONS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "qkv_proj": ("attn", "self_attn", ("q_proj", "k_proj", "v_proj")),
    "q_proj": ("attn", "self_attn", ("q_proj",)),
    "k_proj": ("attn", "self_attn", ("k_proj",)),
    "v_proj": ("attn", "self_attn", ("v_proj",)),
    "o_proj": ("attn", "self_attn", ("o_proj",)),
    "gate_up_proj": ("mlp", "mlp", ("gate_proj", "up_proj")),
    "gate_proj": ("mlp", "mlp", ("gate_proj",)),
    "up_proj": ("mlp", "mlp", ("up_proj",)),
    "down_proj": ("mlp", "mlp", ("down_proj",)),
}

# Output tensors of the projections, as the onnxruntime-genai builder names them (transcode keeps these names).
_TARGET_OUTPUT = re.compile(
    r"^/model/layers\.(\d+)/(attn|mlp)/(" + "|".join(_PROJECTIONS) + r")/(MatMul|MatMulNBits)/output_0$"
)
_LORA_INPUT = re.compile(r"^model\.layers\.(\d+)\.(attn|mlp)\.(\w+)\.lora_([AB])\.weight$")
_MATMUL_OPS = ("MatMul", "MatMulNBits", "Gemm")

# Keys of a peft safetensors file: [base_model.model.]model.layers.<i>.<self_attn|mlp>.<module>.lora_<A|B>.weight
_PEFT_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?:model\.)?layers\.(\d+)\.(self_attn|mlp)\.(" + "|".join(LORA_TARGETS) + r")"
    r"\.lora_([AB])\.weight$"
)
# init_lora_weights values whose adapters apply to the unchanged base weights.
_PLAIN_INITS = (True, False, "gaussian", "eva", "orthogonal")

_DTYPES = {"float32": 1, "float16": 10}  # name -> onnx TensorProto data type


@dataclass(frozen=True)
class LoraTarget:
    """One LoRA branch of the graph: Y[layer, module] += (X @ input_a) @ input_b."""

    layer: int
    module: str  # graph projection: qkv_proj, o_proj, gate_up_proj, down_proj, ...
    input_a: str  # graph input, shape [in_features, rank]
    input_b: str  # graph input, shape [rank, out_features]
    in_features: int
    out_features: int
    parts: tuple[tuple[str, int], ...]  # (peft module, output width) in the order packed along out_features

    @property
    def key(self) -> str:
        return f"layers.{self.layer}.{self.module}"


@dataclass(frozen=True)
class LoraGraphInfo:
    """The LoRA inputs of a graph, as recorded in `<model_dir>/intarsia_lora.json`."""

    model_path: Path
    dtype: str  # float type of the A/B inputs: "float32" or "float16"
    num_layers: int
    max_rank_hint: int
    targets: tuple[LoraTarget, ...]
    signature: str  # hash of the input names, shapes and packing: adapters record it
    added: int = 0  # branches added by the call that returned this (0: the graph already had them)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(n for t in self.targets for n in (t.input_a, t.input_b))

    def target(self, layer: int, module: str) -> LoraTarget:
        for t in self.targets:
            if t.layer == layer and t.module == module:
                return t
        raise KeyError(f"layers.{layer}.{module}")


@dataclass(frozen=True)
class AdapterInfo:
    """An exported `.onnx_adapter` file and what it was made from (also written as a manifest beside it)."""

    name: str
    path: Path
    manifest_path: Path
    rank: int  # peft `r`
    alpha: float  # peft `lora_alpha`
    use_rslora: bool
    targets: tuple[str, ...]  # peft modules the adapter has weights for
    layers: tuple[int, ...]
    parameters: dict = field(hash=False, compare=False)  # graph input name -> shape
    source_sha256: str = ""  # of adapter_model.safetensors
    signature: str = ""  # LoraGraphInfo.signature of the graph it was made for


# --------------------------------------------------------------------------------------------------------------
# Graph side


def _model_file(model_dir: Path) -> Path:
    """The decoder graph of `model_dir` (genai_config.json's decoder filename, else model.onnx)."""
    model_dir = Path(model_dir)
    name = "model.onnx"
    cfg = _genai_config(model_dir)
    if cfg:
        name = cfg.get("model", {}).get("decoder", {}).get("filename", name) or name
    return model_dir / name


def _genai_config(model_dir: Path) -> dict:
    path = Path(model_dir) / "genai_config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BuildError(f"cannot read {path}: {_one_line(e)}") from None


def _load_graph(path: Path):
    import onnx

    if not path.is_file():
        raise BuildError(f"no ONNX model at {path}")
    try:
        # The weights stay in the external data file: only the graph structure is read and rewritten.
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises assorted errors on damaged files
        raise BuildError(f"cannot parse {path} as an ONNX model ({type(e).__name__})") from None


def _dtype_name(data_type: int) -> Optional[str]:
    for name, code in _DTYPES.items():
        if code == data_type:
            return name
    return None


def _dims(value_info) -> list:
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in shape.dim]


def _attr(node, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return a.i
    return default


def _projection_parts(module: str, out_features: int, cfg: dict, where: str) -> tuple[tuple[str, int], ...]:
    """Split a projection's output width among the peft modules it packs."""
    packed = _PROJECTIONS[module][2]
    if len(packed) == 1:
        return ((packed[0], out_features),)
    if module == "gate_up_proj":
        if out_features % 2:
            raise BuildError(f"{where}: packed gate_up_proj has an odd width {out_features}")
        half = out_features // 2
        return (("gate_proj", half), ("up_proj", half))
    dec = cfg.get("model", {}).get("decoder", {})
    try:
        head = int(dec["head_size"])
        q = int(dec["num_attention_heads"]) * head
        kv = int(dec["num_key_value_heads"]) * head
    except (KeyError, TypeError, ValueError):
        raise BuildError(f"{where}: cannot split packed qkv_proj without head sizes in genai_config.json") from None
    if q + 2 * kv != out_features:
        raise BuildError(f"{where}: qkv_proj width {out_features} is not q {q} + k {kv} + v {kv} of genai_config.json")
    return (("q_proj", q), ("k_proj", kv), ("v_proj", kv))


def _input_names(layer: int, group: str, module: str) -> tuple[str, str]:
    base = f"model.layers.{layer}.{group}.{module}"
    return f"{base}.lora_A.weight", f"{base}.lora_B.weight"


def _weight_shape(init: dict, value_info: dict, node) -> tuple[int, int, Optional[str]]:
    """(K, N, float type) of a MatMul-like node's weight, or raise BuildError."""
    where = node.name or node.output[0]
    if node.op_type == "MatMulNBits":
        k, n = _attr(node, "K"), _attr(node, "N")
        scales = init.get(node.input[2]) if len(node.input) > 2 else None
        dtype = _dtype_name(scales.data_type) if scales is not None else None
        if k and n:
            return int(k), int(n), dtype
        raise BuildError(f"{where}: MatMulNBits without K/N attributes")
    w = init.get(node.input[1])
    if w is not None:
        dims = list(w.dims)
        dtype = _dtype_name(w.data_type)
    elif node.input[1] in value_info:
        dims = _dims(value_info[node.input[1]])
        dtype = _dtype_name(value_info[node.input[1]].type.tensor_type.elem_type)
    else:
        raise BuildError(f"{where}: cannot tell the shape of its weight {node.input[1]!r}")
    if len(dims) != 2 or not all(isinstance(d, int) and d > 0 for d in dims):
        raise BuildError(f"{where}: weight {node.input[1]!r} has shape {dims}, expected a fixed 2-D shape")
    k, n = dims
    if node.op_type == "Gemm" and _attr(node, "transB", 0):
        k, n = n, k
    return int(k), int(n), dtype


def _signature(dtype: str, targets: tuple[LoraTarget, ...]) -> str:
    rows = [[t.input_a, t.input_b, t.in_features, t.out_features, [list(p) for p in t.parts]] for t in targets]
    blob = json.dumps([dtype, sorted(rows)], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _target_sort_key(t: LoraTarget) -> tuple:
    order = list(_PROJECTIONS)
    return (t.layer, order.index(t.module) if t.module in order else len(order), t.module)


def list_graph_lora_inputs(model_dir: Path) -> dict[str, list]:
    """LoRA inputs of `model_dir`'s graph: name -> declared shape (the rank dimension is a string)."""
    proto = _load_graph(_model_file(model_dir))
    return {i.name: _dims(i) for i in proto.graph.input if _LORA_INPUT.match(i.name)}


def _graph_targets(proto, cfg: dict, model_path: Path) -> tuple[tuple[LoraTarget, ...], Optional[str]]:
    """The LoRA branches already present in a graph, from its inputs."""
    inputs = {i.name: i for i in proto.graph.input}
    found: dict[tuple, dict[str, object]] = {}
    dtype = None
    for name, vi in inputs.items():
        m = _LORA_INPUT.match(name)
        if not m:
            continue
        layer, group, module, ab = int(m.group(1)), m.group(2), m.group(3), m.group(4)
        if module not in _PROJECTIONS:
            raise BuildError(f"{model_path}: unknown LoRA input {name!r}")
        found.setdefault((layer, group, module), {})[ab] = vi
        this = _dtype_name(vi.type.tensor_type.elem_type)
        if this is None or (dtype is not None and this != dtype):
            raise BuildError(f"{model_path}: LoRA input {name!r} has an unsupported or mixed float type")
        dtype = this
    targets = []
    for (layer, group, module), ab in found.items():
        if set(ab) != {"A", "B"}:
            raise BuildError(f"{model_path}: LoRA input pair of layers.{layer}.{module} is incomplete")
        a_dims, b_dims = _dims(ab["A"]), _dims(ab["B"])
        if len(a_dims) != 2 or len(b_dims) != 2 or not isinstance(a_dims[0], int) or not isinstance(b_dims[1], int):
            raise BuildError(f"{model_path}: LoRA inputs of layers.{layer}.{module} have shapes {a_dims}, {b_dims}")
        k, n = a_dims[0], b_dims[1]
        where = f"{model_path.name}: layers.{layer}.{module}"
        a_name, b_name = _input_names(layer, group, module)
        targets.append(LoraTarget(layer, module, a_name, b_name, k, n, _projection_parts(module, n, cfg, where)))
    return tuple(sorted(targets, key=_target_sort_key)), dtype


def _num_layers(cfg: dict, targets) -> int:
    n = cfg.get("model", {}).get("decoder", {}).get("num_hidden_layers")
    if isinstance(n, int) and n > 0:
        return n
    return max((t.layer for t in targets), default=-1) + 1


def add_lora_inputs(model_dir: Path, *, max_rank_hint: int = 64) -> LoraGraphInfo:
    """Give every projection of `model_dir`'s decoder graph a LoRA branch with A/B graph inputs, in place.

    Targets are found by their output tensor names (`/model/layers.{i}/attn/qkv_proj/MatMul/output_0` etc.),
    whatever subgraph produces them. The graph file is rewritten atomically; its external weight file is not
    touched (the new default tensors are empty and stored inline). Idempotent: a graph that already has the
    inputs is left alone. `max_rank_hint` is recorded; `export_adapter` warns about adapters above it (the
    branches' cost grows with the rank).
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model_dir = Path(model_dir)
    if not isinstance(max_rank_hint, int) or max_rank_hint < 1:
        raise BuildError(f"max_rank_hint must be a positive integer, got {max_rank_hint!r}")
    model_path = _model_file(model_dir)
    cfg = _genai_config(model_dir)
    proto = _load_graph(model_path)
    graph = proto.graph
    if proto.ir_version < 4:
        raise BuildError(f"{model_path}: IR version {proto.ir_version} cannot have overridable initializers")

    init = {t.name: t for t in graph.initializer}
    value_info = {v.name: v for v in list(graph.value_info) + list(graph.input) + list(graph.output)}
    producer = {}
    for idx, node in enumerate(graph.node):
        for o in node.output:
            if o:
                producer[o] = idx
    existing = {i.name for i in graph.input}
    graph_outputs = {o.name for o in graph.output}
    taken = set(producer) | set(init) | existing | {n.name for n in graph.node}

    new_targets: list[LoraTarget] = []
    inserts: dict[int, list] = {}
    rewire: dict[str, str] = {}
    dtypes: set[str] = set()
    # One output per projection. A transcoded projection keeps the builder's `/MatMul/output_0` as its final
    # output and may compute it from an inner `/MatMulNBits/output_0` (plus a correction): the `/MatMul/` name
    # is the projection's result. A builder-quantized graph has only the `/MatMulNBits/` one.
    chosen: dict[tuple[int, str], str] = {}
    for out_name in sorted(producer):
        m = _TARGET_OUTPUT.match(out_name)
        if not m:
            continue
        layer, group, module = int(m.group(1)), m.group(2), m.group(3)
        if _PROJECTIONS[module][0] != group:
            continue
        prev = chosen.get((layer, module))
        if prev is None or (m.group(4) == "MatMul" and not prev.endswith("/MatMul/output_0")):
            chosen[(layer, module)] = out_name
    for (layer, module), out_name in sorted(chosen.items()):
        group = _PROJECTIONS[module][0]
        a_name, b_name = _input_names(layer, group, module)
        if a_name in existing or b_name in existing:
            if not (a_name in existing and b_name in existing):
                raise BuildError(f"{model_path}: LoRA input pair of layers.{layer}.{module} is incomplete")
            continue
        if out_name in graph_outputs:
            raise BuildError(f"{model_path}: {out_name} is a graph output; cannot add a LoRA branch to it")
        prefix = f"/model/layers.{layer}/{group}/{module}/"
        # The node that multiplies by the weight: the producer itself, or a MatMul-like node upstream inside the
        # projection's own subgraph (a transcoded projection may end in an Add of a min-correction MatMul, a
        # Cast, ...). Of several, the MatMulNBits, else the largest weight, is the projection itself.
        candidates, problem = [], None
        queue, seen = [producer[out_name]], set()
        while queue:
            idx = queue.pop(0)
            if idx in seen:
                continue
            seen.add(idx)
            node = graph.node[idx]
            if node.op_type in _MATMUL_OPS:
                try:
                    kk, nn, dt = _weight_shape(init, value_info, node)
                    candidates.append((node.op_type == "MatMulNBits", kk * nn, -len(candidates), node, kk, nn, dt))
                except BuildError as e:
                    problem = problem or e
            for i in node.input:
                if i in producer and graph.node[producer[i]].name.startswith(prefix):
                    queue.append(producer[i])
        if not candidates:
            if problem is not None:
                raise problem
            raise BuildError(f"{model_path}: no MatMul found behind {out_name}")
        *_, root, k, n, dtype = max(candidates, key=lambda c: c[:3])
        if dtype is None:
            x_vi = value_info.get(root.input[0])
            dtype = _dtype_name(x_vi.type.tensor_type.elem_type) if x_vi is not None else None
        if dtype is None:
            raise BuildError(f"{model_path}: cannot tell the float type of {root.name or out_name}")
        dtypes.add(dtype)
        where = f"{model_path.name}: layers.{layer}.{module}"
        target = LoraTarget(layer, module, a_name, b_name, k, n, _projection_parts(module, n, cfg, where))
        new_targets.append(target)

        branch = f"/model/layers.{layer}/{group}/{module}/lora"
        names = [f"{branch}/MatMul_A", f"{branch}/MatMul_B", f"{branch}/Add"]
        outs = [f"{x}/output_0" for x in names]
        clash = taken.intersection(names + outs)
        if clash:
            raise BuildError(f"{model_path}: graph already has {sorted(clash)[0]!r}")
        x = root.input[0]
        nodes = [
            helper.make_node("MatMul", [x, a_name], [outs[0]], name=names[0]),
            helper.make_node("MatMul", [outs[0], b_name], [outs[1]], name=names[1]),
            helper.make_node("Add", [out_name, outs[1]], [outs[2]], name=names[2]),
        ]
        inserts.setdefault(producer[out_name], []).extend(nodes)
        rewire[out_name] = outs[2]
        rank = f"lora_rank_{layer}_{module}"
        np_dtype = np.float32 if dtype == "float32" else np.float16
        graph.input.append(helper.make_tensor_value_info(a_name, _DTYPES[dtype], [k, rank]))
        graph.input.append(helper.make_tensor_value_info(b_name, _DTYPES[dtype], [rank, n]))
        # Rank-0 defaults: with no adapter active ORT uses these and the branch adds zeros.
        graph.initializer.append(numpy_helper.from_array(np.zeros((k, 0), np_dtype), a_name))
        graph.initializer.append(numpy_helper.from_array(np.zeros((0, n), np_dtype), b_name))

    if len(dtypes) > 1:
        raise BuildError(f"{model_path}: projections mix float types {sorted(dtypes)}")
    if not chosen:
        raise BuildError(f"{model_path}: no attention/MLP projections found (not an onnxruntime-genai decoder?)")

    if new_targets:
        for node in graph.node:
            for j, i in enumerate(node.input):
                if i in rewire:
                    node.input[j] = rewire[i]
        ordered = []
        for idx, node in enumerate(graph.node):
            ordered.append(onnx.NodeProto())
            ordered[-1].CopyFrom(node)
            ordered.extend(inserts.get(idx, []))
        del graph.node[:]
        graph.node.extend(ordered)
        data = proto.SerializeToString()
        with atomic_path(model_path) as tmp:
            tmp.write_bytes(data)
        log.info("added %d LoRA branches to %s", len(new_targets), model_path)
    else:
        log.info("%s already has its LoRA inputs", model_path)

    targets, dtype = _graph_targets(proto, cfg, model_path)
    dtype = dtype or "float32"
    info = LoraGraphInfo(
        model_path=model_path,
        dtype=dtype,
        num_layers=_num_layers(cfg, targets),
        max_rank_hint=max_rank_hint,
        targets=targets,
        signature=_signature(dtype, targets),
        added=len(new_targets),
    )
    record = _info_record(info)
    info_path = model_dir / LORA_INFO_FILE
    try:
        current = json.loads(info_path.read_text()) if info_path.is_file() else None
    except (OSError, ValueError):
        current = None
    if current != record:
        write_json_atomic(info_path, record)
    return info


def _info_record(info: LoraGraphInfo) -> dict:
    return {
        "format": INFO_FORMAT,
        "model_file": info.model_path.name,
        "dtype": info.dtype,
        "num_layers": info.num_layers,
        "max_rank_hint": info.max_rank_hint,
        "signature": info.signature,
        "targets": [
            {
                "layer": t.layer,
                "module": t.module,
                "lora_a": t.input_a,
                "lora_b": t.input_b,
                "in_features": t.in_features,
                "out_features": t.out_features,
                "parts": [list(p) for p in t.parts],
            }
            for t in info.targets
        ],
    }


def graph_lora_info(model_dir: Path) -> Optional[LoraGraphInfo]:
    """The LoRA branches of `model_dir`'s graph read from the graph itself, or None if it has none."""
    model_dir = Path(model_dir)
    model_path = _model_file(model_dir)
    cfg = _genai_config(model_dir)
    targets, dtype = _graph_targets(_load_graph(model_path), cfg, model_path)
    if not targets:
        return None
    hint = 64
    info_path = model_dir / LORA_INFO_FILE
    if info_path.is_file():
        try:
            hint = int(json.loads(info_path.read_text()).get("max_rank_hint", hint))
        except (OSError, ValueError, TypeError):
            pass
    dtype = dtype or "float32"
    return LoraGraphInfo(model_path, dtype, _num_layers(cfg, targets), hint, targets, _signature(dtype, targets))


# --------------------------------------------------------------------------------------------------------------
# Adapter side


def adapter_manifest_path(adapter_path: Path) -> Path:
    """The manifest written beside an adapter: `x.onnx_adapter` -> `x.json`."""
    adapter_path = Path(adapter_path)
    stem = adapter_path.name
    if stem.endswith(ADAPTER_SUFFIX):
        stem = stem[: -len(ADAPTER_SUFFIX)]
    return adapter_path.with_name(stem + ".json")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _pattern_value(patterns: dict, module_key: str, default):
    """peft's rank_pattern/alpha_pattern lookup: the first key matching the end of the module name."""
    for pattern, value in (patterns or {}).items():
        try:
            if re.match(rf"(.*\.)?({pattern})$", module_key):
                return value
        except re.error:
            raise BuildError(f"adapter_config.json has an invalid module pattern {pattern!r}") from None
    return default


def _read_peft(peft_dir: Path) -> tuple[dict, dict, Path]:
    peft_dir = Path(peft_dir)
    cfg_path = peft_dir / "adapter_config.json"
    weights = peft_dir / "adapter_model.safetensors"
    if not cfg_path.is_file():
        raise BuildError(f"{peft_dir} is not a peft adapter folder (no adapter_config.json)")
    if not weights.is_file():
        check_peft_folder(peft_dir)  # raises: only a pickle (model.trust), or no weights at all
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise BuildError(f"cannot read {cfg_path}: {_one_line(e)}") from None
    _check_peft_config(config, peft_dir)
    try:
        from safetensors import safe_open

        tensors = {}
        with safe_open(str(weights), framework="pt") as f:
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    except Exception as e:
        raise BuildError(f"cannot read {weights} ({_one_line(e)})") from None
    return config, tensors, weights


def _check_peft_config(config: dict, where: Path) -> None:
    if config.get("peft_type") != "LORA":
        raise BuildError(f"{where}: peft_type is {config.get('peft_type')!r}, only LORA adapters are supported")
    unsupported = [
        ("use_dora", "DoRA"),
        ("lora_bias", "LoRA bias"),
        ("use_qalora", "QA-LoRA"),
        ("layer_replication", "layer replication"),
        ("alora_invocation_tokens", "activated LoRA"),
        ("trainable_token_indices", "trainable tokens"),
        ("target_parameters", "target_parameters"),
        ("arrow_config", "Arrow routing"),
        ("kasa_config", "KaSA"),
        ("monteclora_config", "MonteCLoRA"),
        ("use_bdlora", "block-diagonal LoRA"),
        ("modules_to_save", "modules_to_save (full copies of base modules)"),
    ]
    for key, what in unsupported:
        if config.get(key):
            raise BuildError(f"{where}: {what} is not supported by run-time LoRA (config {key})")
    if config.get("bias", "none") != "none":
        raise BuildError(f"{where}: bias={config.get('bias')!r} trains base biases, only bias='none' is supported")
    init = config.get("init_lora_weights", True)
    if init not in _PLAIN_INITS:
        raise BuildError(
            f"{where}: init_lora_weights={init!r} changes the base weights; convert it to a plain LoRA first"
        )
    if config.get("fan_in_fan_out"):
        raise BuildError(f"{where}: fan_in_fan_out adapters (Conv1D bases) are not supported")


def export_adapter(peft_dir: Path, model_dir: Path, out_path: Path, *, name: Optional[str] = None) -> AdapterInfo:
    """Convert a peft LoRA folder into an ONNX Runtime adapter for `model_dir`'s graph (see module docstring).

    Raises BuildError if the graph has no LoRA inputs, if the adapter does not fit the graph (layer count,
    shapes) or uses peft features that a plain run-time LoRA cannot express.
    """
    import numpy as np
    import onnxruntime as ort

    out_path = Path(out_path)
    if not out_path.name.endswith(ADAPTER_SUFFIX):
        raise BuildError(f"adapter file name must end with {ADAPTER_SUFFIX}: {out_path}")
    name = name or out_path.name[: -len(ADAPTER_SUFFIX)]
    info = graph_lora_info(model_dir)
    if info is None:
        raise BuildError(f"{model_dir} has no LoRA inputs; run add_lora_inputs on it first")
    config, tensors, weights_path = _read_peft(peft_dir)
    r_default = int(config.get("r", 8))
    alpha_default = float(config.get("lora_alpha", 8))
    rslora = bool(config.get("use_rslora", False))

    # module key -> {"A": tensor [r, K], "B": tensor [N, r]}
    modules: dict[str, dict] = {}
    for key, value in tensors.items():
        m = _PEFT_KEY.match(key)
        if not m:
            raise BuildError(f"{peft_dir}: unsupported tensor {key!r} (only LoRA A/B of {', '.join(LORA_TARGETS)})")
        modules.setdefault(f"model.layers.{m.group(1)}.{m.group(2)}.{m.group(3)}", {})[m.group(4)] = value
    if not modules:
        raise BuildError(f"{peft_dir}: the adapter has no LoRA weights")

    by_target: dict[tuple[int, str], dict[str, tuple]] = {}
    index = {(t.layer, p): t for t in info.targets for p, _ in t.parts}
    max_rank = 0
    for mkey, ab in sorted(modules.items()):
        m = re.match(r"model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)$", mkey)
        layer, peft_module = int(m.group(1)), m.group(3)
        if set(ab) != {"A", "B"}:
            raise BuildError(f"{peft_dir}: {mkey} has lora_{''.join(sorted(ab))} but not both A and B")
        if layer >= info.num_layers:
            raise BuildError(
                f"adapter does not fit this model: it has weights for layer {layer}, the model has {info.num_layers}"
            )
        target = index.get((layer, peft_module))
        if target is None:
            raise BuildError(f"the graph has no LoRA branch for {mkey}; rebuild it with add_lora_inputs")
        a, b = ab["A"], ab["B"]
        width = dict(target.parts)[peft_module]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise BuildError(f"{peft_dir}: {mkey} has inconsistent LoRA shapes A {tuple(a.shape)}, B {tuple(b.shape)}")
        if a.shape[1] != target.in_features or b.shape[0] != width:
            raise BuildError(
                f"adapter does not fit this model: {mkey} maps {a.shape[1]}->{b.shape[0]}, "
                f"the model's {peft_module} maps {target.in_features}->{width}"
            )
        r = int(_pattern_value(config.get("rank_pattern"), mkey, r_default))
        alpha = float(_pattern_value(config.get("alpha_pattern"), mkey, alpha_default))
        if r != a.shape[0]:
            raise BuildError(f"{peft_dir}: {mkey} has rank {a.shape[0]} but the config says r={r}")
        scaling = alpha / math.sqrt(r) if rslora else alpha / r
        a64 = a.detach().to("cpu").double().numpy()
        b64 = b.detach().to("cpu").double().numpy() * scaling
        by_target.setdefault((target.layer, target.module), {})[peft_module] = (a64, b64)

    np_dtype = np.float32 if info.dtype == "float32" else np.float16
    params: dict[str, object] = {}
    shapes: dict[str, list[int]] = {}
    for t in info.targets:
        present = by_target.get((t.layer, t.module))
        if not present:
            continue  # the rank-0 default applies: this projection is unchanged
        a_blocks, b_rows, offset = [], [], 0
        for part, width in t.parts:
            if part in present:
                a64, b64 = present[part]
                a_blocks.append(a64.T)  # [K, r]
                rows = np.zeros((a64.shape[0], t.out_features))
                rows[:, offset : offset + width] = b64.T  # [r, width] placed in this module's columns
                b_rows.append(rows)
            offset += width
        a_packed = np.ascontiguousarray(np.concatenate(a_blocks, axis=1).astype(np_dtype))
        b_packed = np.ascontiguousarray(np.concatenate(b_rows, axis=0).astype(np_dtype))
        max_rank = max(max_rank, a_packed.shape[1])
        params[t.input_a] = ort.OrtValue.ortvalue_from_numpy(a_packed)
        params[t.input_b] = ort.OrtValue.ortvalue_from_numpy(b_packed)
        shapes[t.input_a] = list(a_packed.shape)
        shapes[t.input_b] = list(b_packed.shape)
    if max_rank > info.max_rank_hint:
        log.warning("adapter %s has branches of rank %d, above the graph's hint %d", name, max_rank, info.max_rank_hint)

    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(1)
    fmt.set_parameters(params)
    with atomic_path(out_path) as tmp:
        fmt.export_adapter(str(tmp))

    targets = tuple(sorted({p for parts in by_target.values() for p in parts}, key=LORA_TARGETS.index))
    layers = tuple(sorted({layer for layer, _ in by_target}))
    manifest_path = adapter_manifest_path(out_path)
    source_sha = sha256_file(weights_path)
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": name,
        "adapter_file": out_path.name,
        "adapter_sha256": sha256_file(out_path),
        "source": {
            "adapter_model_sha256": source_sha,
            "adapter_config_sha256": sha256_file(Path(peft_dir) / "adapter_config.json"),
            "base_model_name_or_path": config.get("base_model_name_or_path"),
        },
        "rank": r_default,
        "alpha": alpha_default,
        "use_rslora": rslora,
        "rank_pattern": config.get("rank_pattern") or {},
        "alpha_pattern": config.get("alpha_pattern") or {},
        "targets": list(targets),
        "layers": list(layers),
        "dtype": info.dtype,
        "graph_signature": info.signature,
        "parameters": shapes,
    }
    write_json_atomic(manifest_path, manifest)
    log.info("exported adapter %s (%d tensors, rank <= %d) to %s", name, len(params), max_rank, out_path)
    return AdapterInfo(
        name=name,
        path=out_path,
        manifest_path=manifest_path,
        rank=r_default,
        alpha=alpha_default,
        use_rslora=rslora,
        targets=targets,
        layers=layers,
        parameters=shapes,
        source_sha256=source_sha,
        signature=info.signature,
    )


def check_adapter(adapter_path: Path, model_dir: Path) -> dict[str, list[int]]:
    """Check an `.onnx_adapter` file against `model_dir`'s graph before loading it; name -> shape.

    ONNX Runtime itself only notices a mismatch when the first token is computed; this raises EngineError with
    a one-line reason instead (unknown tensor names, wrong shapes, wrong float type, unpaired A/B).
    """
    import onnxruntime as ort

    adapter_path = Path(adapter_path)
    if not adapter_path.is_file():
        raise EngineError(f"adapter file not found: {adapter_path}")
    try:
        info = graph_lora_info(model_dir)
    except BuildError as e:
        raise EngineError(str(e)) from None
    if info is None:
        raise EngineError(f"the model in {model_dir} has no LoRA inputs, it cannot use adapters")
    try:
        params = ort.AdapterFormat.read_adapter(str(adapter_path)).get_parameters()
    except Exception as e:
        raise EngineError(f"{adapter_path} is not an ONNX Runtime adapter file ({type(e).__name__})") from None
    expected = {f"tensor({info.dtype.replace('float32', 'float')})"}
    by_input = {}
    for t in info.targets:
        by_input[t.input_a] = (t, 0)
        by_input[t.input_b] = (t, 1)
    shapes: dict[str, list[int]] = {}
    for pname, value in params.items():
        if pname not in by_input:
            raise EngineError(f"adapter {adapter_path.name} does not fit this model: unknown tensor {pname!r}")
        shape = list(value.shape())
        t, side = by_input[pname]
        fixed = t.in_features if side == 0 else t.out_features
        if len(shape) != 2 or shape[side] != fixed:
            raise EngineError(
                f"adapter {adapter_path.name} does not fit this model: {pname} has shape {shape}, "
                f"the model needs {'[' + str(fixed) + ', r]' if side == 0 else '[r, ' + str(fixed) + ']'}"
            )
        if value.data_type() not in expected:
            raise EngineError(
                f"adapter {adapter_path.name}: {pname} is {value.data_type()}, the model needs {info.dtype}"
            )
        shapes[pname] = shape
    if not shapes:
        raise EngineError(f"adapter {adapter_path.name} has no tensors")
    for t in info.targets:
        a, b = shapes.get(t.input_a), shapes.get(t.input_b)
        if (a is None) != (b is None) or (a is not None and a[1] != b[0]):
            raise EngineError(f"adapter {adapter_path.name}: LoRA A/B of {t.key} are missing or of different ranks")
    return shapes


def read_adapter_manifest(adapter_path: Path) -> Optional[dict]:
    """The manifest written beside `adapter_path` by export_adapter, or None if there is none."""
    path = adapter_manifest_path(adapter_path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise EngineError(f"cannot read adapter manifest {path}: {_one_line(e)}") from None
