"""Exact transcoding of a GGUF file's quantized blocks into ONNX Runtime `MatMulNBits` weights.

The onnxruntime-genai builder exports the fp32 Hugging Face folder that `convert.gguf_to_hf` dequantized from
the GGUF. `transcode` takes that fp32 graph and refills every weight matrix with the GGUF's *own* blocks, so
the served model computes with exactly the numbers llama.cpp and `gguf.quants.dequantize` use: there is no
second quantization.

Every GGUF block format used by llama.cpp's legacy and K-quants is an affine code per block,

    w[n, k] = scale[n, k // block] * (code[n, k] - zero_point[n, k // block])  (+ min[n, k // min_block])

and `MatMulNBits` computes `A @ ((code - zero_point) * scale)^T` with uint8 zero points, so:

======  ==========================================  ==============================================
GGUF    MatMulNBits form                            why it is exact
======  ==========================================  ==============================================
Q8_0    8 bits, block 32, zp 128, scale d            code = q + 128
Q5_0    8 bits, block 32, zp 16, scale d             5-bit code kept as is
Q6_K    8 bits, block 16, zp 32, scale d*sc          d*sc is exact in fp32 (11 x 8 bits)
Q4_0    4 bits, block 32, zp 8, scale d              nibble kept as is
Q4_1    4 bits, block 32, zp 0, scale d, + min m     min term as a correction (below)
Q5_1    8 bits, block 32, zp 0, scale d, + min m     min term as a correction
Q4_K    4 bits, block 32, zp 0, scale d*sc, - dmin*m min term as a correction
Q5_K    8 bits, block 32, zp 0, scale d*sc, - dmin*m min term as a correction
======  ==========================================  ==============================================

Min terms (Q4_1, Q5_1, Q4_K, Q5_K) are not integer multiples of the scale, so no uint8 zero point can hold
them, and ORT 1.32's CPU kernel with float zero points takes a slow path (an 896x4864 product at batch 1:
4.0-15.8 ms against 0.13 ms; it refuses float zero points with 8 bits). The min term is instead added to the
product the way llama.cpp's q4_K x q8_K dot product does it, from per-block sums of the input::

    Y = MatMulNBits(A) + ReduceSum(Reshape(A, [b, s, K/32, 32]), -1) @ T      T[K/32, N] = min (or -dmin*m)

(Reshape/ReduceSum/MatMul/Add on the builder's [batch, sequence, K] activations; the block sums are shared by the
matrices that read the same input). The
weights are then exact in real arithmetic; only the matmul's own rounding differs from a dequantized fp32
product.

Matrices packed along N by the builder (q|k|v in `qkv_proj`, gate|up in `gate_up_proj`) may mix GGUF types
(Q5_0 q/k with Q8_0 v in Q4_K_M files). Rule: the parts are concatenated along N in one common form with
``bits = max(bits)``, ``block = min(block)`` (every block size is a power of two, so a part's scale and zero
point are repeated over the smaller blocks), and, when any part has a min term, ``min_block = min(min
blocks)`` with zero rows for the parts without one. Zero points are per block and per row, so parts keep their
own (Q5_0+Q8_0 → 8 bits/32, zp 16|128). When every part already has the same form this is a plain
concatenation. Types with no exact block form here (F16, BF16, F32, Q2_K, Q3_K, IQ*) keep the builder's fp32
MatMul, which is exact because it was checked against `gguf.quants.dequantize`.

The token embedding becomes `GatherBlockQuantized` (8 bits, or 4 bits for Q4_0, with uint8 zero points; about
a quarter of the fp32 size, exact) when its type has no min term, else it stays an fp32 Gather (also exact).

Forms were chosen by measurement (2-core AMD EPYC Zen 3, AVX2 without VNNI, shared, ORT 1.32, 2 threads):
8 bits/32 is the fastest exact form of the 5-bit Q5_0 at accuracy level 4 (a 12-layer 896x4864 chain whose
weights exceed the cache: 17.7 ms per token and 1.84 s for 500 tokens, against 19.8 ms / 3.1 s for a 4-bit +
2-bit split of the code and 40 ms / 1.25 s in fp32); the correction costs ~0.02 ms per matrix. Accuracy levels
0/1 (fp32 activations) run 8-bit weights through a slow dequantizing path in ORT 1.32: ~2.7-3 s per token for
the 0.5B model against ~0.08-0.1 s at level 4, so they are for verification, and serving uses 4.

Contract with the LoRA pass that runs afterwards: every replaced node keeps its input tensor and its
original output tensor name (e.g. `/model/layers.0/attn/qkv_proj/MatMul/output_0`, `logits`), which is the
final output of the replacement subgraph.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from .errors import BuildError, CorruptModelError

log = logging.getLogger(__name__)

MS_DOMAIN = "com.microsoft"
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
ACCURACY_LEVELS = (0, 1, 2, 3, 4)
# Tensors at least this large start at a page boundary of the data file (ORT can map them); others at 64 bytes.
_ALIGN_BIG = 4096
_ALIGN_SMALL = 64
_BIG = 1 << 16


# --------------------------------------------------------------------------------------------------------------
# GGUF blocks → affine block form
# --------------------------------------------------------------------------------------------------------------


@dataclass
class BlockForm:
    """One weight matrix [N, K] as w = scale * (code - zero_point) (+ mins), blocks along K.

    `codes` uint8 [N, K]; `scales` float32 [N, K / block]; `zero_points` uint8 [N, K / block]; `mins` float32
    [N, K / min_block] or None. `bits` is the storage width (4 or 8) the codes fit in.
    """

    codes: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray
    bits: int
    block: int
    mins: Optional[np.ndarray] = None
    min_block: int = 0

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape  # type: ignore[return-value]

    def dequantize(self) -> np.ndarray:
        """The weights [N, K] in fp32, computed in the order llama.cpp and `gguf` use."""
        n, k = self.codes.shape
        q = self.codes.reshape(n, k // self.block, self.block).astype(np.float32)
        q -= self.zero_points[:, :, None].astype(np.float32)
        w = (self.scales[:, :, None] * q).reshape(n, k)
        if self.mins is not None:
            w = (w.reshape(n, k // self.min_block, self.min_block) + self.mins[:, :, None]).reshape(n, k)
        return w


def _f16(b: np.ndarray, start: int) -> np.ndarray:
    """fp16 field at byte `start` of each block, as float32 (nb, 1)."""
    return np.ascontiguousarray(b[:, start : start + 2]).view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(nb, 16) bytes → (nb, 32) codes: element j < 16 is the low nibble of byte j, j + 16 its high nibble."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _high_bits32(qh: np.ndarray) -> np.ndarray:
    """(nb, 4) bytes of a little-endian uint32 → (nb, 32) bits, bit i for element i."""
    return np.unpackbits(np.ascontiguousarray(qh), axis=1, bitorder="little")


def _k_scale_min(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 12 packed bytes of Q4_K/Q5_K → 8 six-bit scales and 8 six-bit mins per super-block (uint8)."""
    sc = np.empty((s.shape[0], 8), np.uint8)
    mn = np.empty((s.shape[0], 8), np.uint8)
    sc[:, :4] = s[:, 0:4] & 63
    mn[:, :4] = s[:, 4:8] & 63
    sc[:, 4:] = (s[:, 8:12] & 0x0F) | ((s[:, 0:4] >> 6) << 4)
    mn[:, 4:] = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return sc, mn


def _blocks(raw: np.ndarray, n: int, type_size: int) -> np.ndarray:
    return np.ascontiguousarray(raw).reshape(-1, type_size)


def _decode_q8_0(raw: np.ndarray, n: int, k: int) -> BlockForm:
    b = _blocks(raw, n, 34)
    codes = (b[:, 2:] ^ 0x80).reshape(n, k)  # int8 q → q + 128
    return BlockForm(codes, _f16(b, 0).reshape(n, -1), np.full((n, k // 32), 128, np.uint8), 8, 32)


def _decode_q5_0(raw: np.ndarray, n: int, k: int) -> BlockForm:
    b = _blocks(raw, n, 22)
    codes = (_nibbles(b[:, 6:22]) | (_high_bits32(b[:, 2:6]) << 4)).reshape(n, k)
    return BlockForm(codes, _f16(b, 0).reshape(n, -1), np.full((n, k // 32), 16, np.uint8), 8, 32)


def _decode_q5_1(raw: np.ndarray, n: int, k: int) -> BlockForm:
    b = _blocks(raw, n, 24)
    codes = (_nibbles(b[:, 8:24]) | (_high_bits32(b[:, 4:8]) << 4)).reshape(n, k)
    zp = np.zeros((n, k // 32), np.uint8)
    return BlockForm(codes, _f16(b, 0).reshape(n, -1), zp, 8, 32, _f16(b, 2).reshape(n, -1), 32)


def _decode_q4_0(raw: np.ndarray, n: int, k: int) -> BlockForm:
    b = _blocks(raw, n, 18)
    codes = _nibbles(b[:, 2:18]).reshape(n, k)
    return BlockForm(codes, _f16(b, 0).reshape(n, -1), np.full((n, k // 32), 8, np.uint8), 4, 32)


def _decode_q4_1(raw: np.ndarray, n: int, k: int) -> BlockForm:
    b = _blocks(raw, n, 20)
    codes = _nibbles(b[:, 4:20]).reshape(n, k)
    zp = np.zeros((n, k // 32), np.uint8)
    return BlockForm(codes, _f16(b, 0).reshape(n, -1), zp, 4, 32, _f16(b, 2).reshape(n, -1), 32)


def _k_low_nibbles(qs: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K quants (nb, 128) → (nb, 256): 32-byte chunk j holds sub-block 2j (low) and 2j+1 (high)."""
    q = qs.reshape(-1, 4, 1, 32)
    return np.concatenate([q & 0x0F, q >> 4], axis=2).reshape(-1, 256)


def _decode_q4_k(raw: np.ndarray, n: int, k: int) -> BlockForm:
    b = _blocks(raw, n, 144)
    sc, mn = _k_scale_min(b[:, 4:16])
    scales = (_f16(b, 0) * sc.astype(np.float32)).reshape(n, -1)
    mins = -(_f16(b, 2) * mn.astype(np.float32)).reshape(n, -1)
    codes = _k_low_nibbles(b[:, 16:144]).reshape(n, k)
    return BlockForm(codes, scales, np.zeros((n, k // 32), np.uint8), 4, 32, mins, 32)


def _decode_q5_k(raw: np.ndarray, n: int, k: int) -> BlockForm:
    b = _blocks(raw, n, 176)
    sc, mn = _k_scale_min(b[:, 4:16])
    scales = (_f16(b, 0) * sc.astype(np.float32)).reshape(n, -1)
    mins = -(_f16(b, 2) * mn.astype(np.float32)).reshape(n, -1)
    low = _k_low_nibbles(b[:, 48:176]).reshape(-1, 8, 32)
    # bit j of byte l of qh is the fifth bit of element l of sub-block j
    high = (b[:, None, 16:48] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
    codes = (low | (high << 4)).reshape(n, k)
    return BlockForm(codes, scales, np.zeros((n, k // 32), np.uint8), 8, 32, mins, 32)


def _decode_q6_k(raw: np.ndarray, n: int, k: int) -> BlockForm:
    b = _blocks(raw, n, 210)
    ql = b[:, 0:128].reshape(-1, 2, 64)
    qh = b[:, 128:192].reshape(-1, 2, 32)
    lo, hi = ql[:, :, :32], ql[:, :, 32:]
    rows = [
        (lo & 0x0F) | ((qh & 3) << 4),
        (hi & 0x0F) | (((qh >> 2) & 3) << 4),
        (lo >> 4) | (((qh >> 4) & 3) << 4),
        (hi >> 4) | (((qh >> 6) & 3) << 4),
    ]
    codes = np.stack(rows, axis=2).reshape(n, k)  # (nb, half, row-of-32, 32)
    sc = np.ascontiguousarray(b[:, 192:208]).view(np.int8).astype(np.float32)
    scales = (_f16(b, 208) * sc).reshape(n, -1)
    return BlockForm(codes, scales, np.full((n, k // 16), 32, np.uint8), 8, 16)


_DECODERS: dict[str, Callable[[np.ndarray, int, int], BlockForm]] = {
    "Q8_0": _decode_q8_0,
    "Q5_0": _decode_q5_0,
    "Q5_1": _decode_q5_1,
    "Q4_0": _decode_q4_0,
    "Q4_1": _decode_q4_1,
    "Q4_K": _decode_q4_k,
    "Q5_K": _decode_q5_k,
    "Q6_K": _decode_q6_k,
}
SUPPORTED_TYPES = tuple(_DECODERS)


def decode_blocks(raw: np.ndarray, type_name: str, n: int, k: int) -> Optional[BlockForm]:
    """GGUF bytes of an [N, K] tensor of `type_name` → its block form, or None if it has no exact one here."""
    dec = _DECODERS.get(type_name)
    return None if dec is None else dec(raw, n, k)


def combine(forms: Sequence[BlockForm]) -> BlockForm:
    """Concatenate parts along N in one common exact form (see the module docstring for the rule)."""
    if len(forms) == 1:
        return forms[0]
    k = forms[0].shape[1]
    if any(f.shape[1] != k for f in forms):
        raise BuildError("packed matrix parts differ in their input size")
    bits = max(f.bits for f in forms)
    block = min(f.block for f in forms)
    with_mins = [f.min_block for f in forms if f.mins is not None]
    min_block = min(with_mins) if with_mins else 0
    scales, zps, mins = [], [], []
    for f in forms:
        rep = f.block // block
        scales.append(np.repeat(f.scales, rep, axis=1) if rep > 1 else f.scales)
        zps.append(np.repeat(f.zero_points, rep, axis=1) if rep > 1 else f.zero_points)
        if min_block:
            if f.mins is None:
                mins.append(np.zeros((f.shape[0], k // min_block), np.float32))
            else:
                mrep = f.min_block // min_block
                mins.append(np.repeat(f.mins, mrep, axis=1) if mrep > 1 else f.mins)
    return BlockForm(
        np.concatenate([f.codes for f in forms], axis=0),
        np.concatenate(scales, axis=0),
        np.concatenate(zps, axis=0),
        bits,
        block,
        np.concatenate(mins, axis=0) if min_block else None,
        min_block,
    )


# --------------------------------------------------------------------------------------------------------------
# MatMulNBits / GatherBlockQuantized layouts
# --------------------------------------------------------------------------------------------------------------


def pack_codes(codes: np.ndarray, bits: int, block: int) -> np.ndarray:
    """uint8 codes [N, K] → MatMulNBits B [N, K / block, block * bits / 8] (low bits first along K)."""
    n, k = codes.shape
    if bits == 8:
        return np.ascontiguousarray(codes.reshape(n, k // block, block))
    if bits == 4:
        c = codes.reshape(n, k // block, block // 2, 2)
        return (c[..., 0] | (c[..., 1] << 4)).astype(np.uint8)
    raise BuildError(f"no packing for {bits}-bit codes")


def unpack_codes(b: np.ndarray, bits: int, k: int) -> np.ndarray:
    """Inverse of `pack_codes`: B [N, n_blocks, blob] → codes [N, K]."""
    n = b.shape[0]
    if bits == 8:
        return b.reshape(n, -1)[:, :k]
    if bits == 4:
        flat = b.reshape(n, -1)
        return np.stack([flat & 0x0F, flat >> 4], axis=2).reshape(n, -1)[:, :k]
    raise BuildError(f"no unpacking for {bits}-bit codes")


def pack_zero_points(zp: np.ndarray, bits: int) -> np.ndarray:
    """uint8 zero points [N, n_blocks] → packed [N, ceil(n_blocks * bits / 8)] (low bits first)."""
    if bits == 8:
        return np.ascontiguousarray(zp)
    if bits == 4:
        n, nb = zp.shape
        z = np.zeros((n, nb + (nb & 1)), np.uint8)
        z[:, :nb] = zp
        return (z[:, 0::2] | (z[:, 1::2] << 4)).astype(np.uint8)
    raise BuildError(f"no packing for {bits}-bit zero points")


def unpack_zero_points(zp: np.ndarray, bits: int, n_blocks: int) -> np.ndarray:
    if bits == 8:
        return zp.reshape(zp.shape[0], -1)[:, :n_blocks]
    if bits == 4:
        z = zp.reshape(zp.shape[0], -1)
        return np.stack([z & 0x0F, z >> 4], axis=2).reshape(z.shape[0], -1)[:, :n_blocks]
    raise BuildError(f"no unpacking for {bits}-bit zero points")


# --------------------------------------------------------------------------------------------------------------
# Mapping builder graph tensors → GGUF tensors
# --------------------------------------------------------------------------------------------------------------

_ATTN_RE = re.compile(r"layers\.(\d+)[./](?:attn|self_attn)[./](qkv_proj|q_proj|k_proj|v_proj|o_proj)[./]")
_MLP_RE = re.compile(r"layers\.(\d+)[./]mlp[./](gate_up_proj|gate_proj|up_proj|down_proj)[./]")
_LM_HEAD_RE = re.compile(r"(?:^|[./])lm_head[./]")
_EMBED_RE = re.compile(r"(?:^|[./])embed_tokens[./]")

_PROJ_PARTS = {
    "qkv_proj": ("attn_qkv", ("attn_q", "attn_k", "attn_v")),
    "q_proj": ("attn_q", ("attn_q",)),
    "k_proj": ("attn_k", ("attn_k",)),
    "v_proj": ("attn_v", ("attn_v",)),
    "o_proj": ("attn_o", ("attn_output",)),
    "gate_up_proj": ("mlp_gate_up", ("ffn_gate", "ffn_up")),
    "gate_proj": ("mlp_gate", ("ffn_gate",)),
    "up_proj": ("mlp_up", ("ffn_up",)),
    "down_proj": ("mlp_down", ("ffn_down",)),
}


def gguf_parts(name: str, gguf_names: Iterable[str]) -> Optional[tuple[str, tuple[str, ...]]]:
    """(tensor class, GGUF tensor names along N) for a builder node or initializer name, or None."""
    key = name + "/"
    m = _ATTN_RE.search(key) or _MLP_RE.search(key)
    if m:
        cls, parts = _PROJ_PARTS[m.group(2)]
        return cls, tuple(f"blk.{m.group(1)}.{p}.weight" for p in parts)
    if _LM_HEAD_RE.search(key):
        return "lm_head", ("output.weight" if "output.weight" in set(gguf_names) else "token_embd.weight",)
    if _EMBED_RE.search(key):
        return "embed_tokens", ("token_embd.weight",)
    return None


# --------------------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorEntry:
    """How one builder tensor was transcoded."""

    onnx_name: str  # the replaced node's output tensor (kept), e.g. /model/layers.0/attn/qkv_proj/MatMul/output_0
    node: str  # the original node's name
    weight: str  # the original fp32 initializer
    tensor_class: str  # attn_qkv, attn_o, mlp_gate, mlp_up, mlp_down, lm_head, embed_tokens, ...
    gguf_names: tuple[str, ...]
    gguf_types: tuple[str, ...]
    op: str  # MatMulNBits, GatherBlockQuantized, or MatMul/Gather (fp32 kept)
    bits: Optional[int]
    block_size: Optional[int]
    zero_point: str  # the zero points per part, "16|128"; "-" for fp32
    correction: bool  # min term added from block sums of the input
    max_abs_error: float  # against gguf.quants.dequantize of the GGUF tensors
    nbytes: int  # bytes of the tensor's initializers as written

    @property
    def scheme(self) -> str:
        types = "+".join(dict.fromkeys(self.gguf_types))
        if self.bits is None:
            return f"{types} → {self.op} fp32 (kept)"
        s = f"{types} → {self.op} {self.bits}-bit/{self.block_size}, zp {self.zero_point}"
        return s + (", min correction" if self.correction else "")


@dataclass(frozen=True)
class TranscodeReport:
    entries: tuple[TensorEntry, ...]
    accuracy_level: int
    total_bytes: int  # model.onnx + model.onnx.data as written
    data_bytes: int  # model.onnx.data alone

    def by_class(self) -> dict[str, str]:
        """Scheme per tensor class, e.g. {"attn_qkv": "Q5_0+Q8_0 → MatMulNBits 8-bit/32, zp 16|128 (×12); ..."}."""
        out: dict[str, dict[str, int]] = {}
        for e in self.entries:
            out.setdefault(e.tensor_class, {})
            out[e.tensor_class][e.scheme] = out[e.tensor_class].get(e.scheme, 0) + 1
        return {
            cls: "; ".join(s if len(schemes) == 1 else f"{s} (×{n})" for s, n in schemes.items())
            for cls, schemes in out.items()
        }

    @property
    def max_abs_error(self) -> float:
        return max((e.max_abs_error for e in self.entries), default=0.0)

    def to_json(self) -> dict:
        """A JSON-ready dict for the build manifest."""
        return {
            "accuracy_level": self.accuracy_level,
            "total_bytes": self.total_bytes,
            "data_bytes": self.data_bytes,
            "max_abs_error": self.max_abs_error,
            "by_class": self.by_class(),
            "tensors": [
                {**asdict(e), "gguf_names": list(e.gguf_names), "gguf_types": list(e.gguf_types)}
                for e in self.entries
            ],
        }


@dataclass(frozen=True)
class TensorCheck:
    """`verify`'s result for one weight: its dequantized ONNX values against gguf's dequantization."""

    onnx_name: str
    gguf_names: tuple[str, ...]
    gguf_types: tuple[str, ...]
    op: str
    # Against gguf's dequantization; for an fp16 weight, against that dequantization rounded once to fp16
    # (round to nearest even, as numpy and torch cast), so 0.0 means "exact" for every form.
    max_abs_error: float
    n_values: int
    dtype: str = "float32"  # the stored weight's float type ("float16" for CUDA graphs), or "blocks"
    rounding_error: float = 0.0  # max |stored - gguf's dequantization| (fp16 rounding; 0.0 otherwise)
    tensor_class: str = ""

    @property
    def exact(self) -> bool:
        return self.max_abs_error == 0.0


# Round to nearest: |fp16(w) - w| <= 2^-11 |w| for normal values, <= 2^-25 below fp16's smallest normal.
FP16_RELATIVE_BOUND = 2.0**-11
FP16_SUBNORMAL_BOUND = 2.0**-25


def fp16_scheme(checks: Sequence[TensorCheck]) -> dict[str, str]:
    """Scheme per tensor class of an fp16 graph checked by `verify`, in `TranscodeReport.by_class`'s style:
    {"attn_qkv": "Q5_0+Q8_0 → MatMul fp16, rounded once (×12); ...", ...}."""
    out: dict[str, dict[str, int]] = {}
    for c in checks:
        if c.op == "missing" or not c.tensor_class:
            continue
        types = "+".join(dict.fromkeys(c.gguf_types))
        kind = "fp16, rounded once" if c.dtype == "float16" else "fp32 (kept)" if c.dtype == "float32" else "blocks"
        scheme = f"{types} → {c.op} {kind}"
        out.setdefault(c.tensor_class, {})
        out[c.tensor_class][scheme] = out[c.tensor_class].get(scheme, 0) + 1
    return {cls: "; ".join(s if len(v) == 1 else f"{s} (×{n})" for s, n in v.items()) for cls, v in out.items()}


def fp16_report(checks: Sequence[TensorCheck]) -> dict:
    """A JSON-ready summary of `verify` on an fp16 graph, for the build manifest."""
    return {
        "form": "fp16: gguf's dequantization rounded once to fp16 (round to nearest even)",
        "relative_bound": FP16_RELATIVE_BOUND,
        "tensors": len([c for c in checks if c.op != "missing"]),
        "values": sum(c.n_values for c in checks),
        "max_abs_error": max((c.max_abs_error for c in checks), default=0.0),
        "max_rounding_error": max((c.rounding_error for c in checks), default=0.0),
        "by_class": fp16_scheme(checks),
    }


# --------------------------------------------------------------------------------------------------------------
# ONNX file access
# --------------------------------------------------------------------------------------------------------------


class _Initializers:
    """Initializers of a model read lazily (external data through read-only memory maps)."""

    def __init__(self, model_dir: Path, graph) -> None:
        self.dir = model_dir
        self.protos = {t.name: t for t in graph.initializer}
        self._maps: dict[str, np.memmap] = {}

    def _ext(self, t) -> Optional[dict]:
        from onnx import TensorProto

        if t.data_location != TensorProto.EXTERNAL:
            return None
        return {e.key: e.value for e in t.external_data}

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes (uint8, read-only) for an external tensor."""
        t = self.protos[name]
        info = self._ext(t)
        if info is None:
            raise KeyError(name)
        loc = info["location"]
        path = (self.dir / loc).resolve()
        if self.dir.resolve() not in path.parents:
            raise CorruptModelError(f"external data of {name} points outside the model folder")
        if loc not in self._maps:
            try:
                self._maps[loc] = np.memmap(path, dtype=np.uint8, mode="r")
            except (OSError, ValueError) as e:
                raise CorruptModelError(f"cannot read {path}: {e}") from None
        mm = self._maps[loc]
        off = int(info.get("offset", 0))
        length = int(info.get("length", len(mm) - off))
        if off + length > len(mm):
            raise CorruptModelError(f"{path} is truncated (tensor {name})")
        return mm[off : off + length]

    def locations(self) -> set[str]:
        """External data files the model refers to."""
        return {info["location"] for t in self.protos.values() if (info := self._ext(t)) is not None}

    def is_external(self, name: str) -> bool:
        return self._ext(self.protos[name]) is not None

    def array(self, name: str) -> np.ndarray:
        from onnx import helper, numpy_helper

        t = self.protos[name]
        if self._ext(t) is None:
            return numpy_helper.to_array(t)
        dtype = helper.tensor_dtype_to_np_dtype(t.data_type)
        return self.raw(name).view(dtype).reshape(tuple(t.dims))


class _DataWriter:
    """Appends tensors to one external data file and returns their TensorProtos."""

    def __init__(self, path: Path, location: str) -> None:
        self.f = open(path, "wb")
        self.location = location
        self.offset = 0

    def _place(self, nbytes: int) -> int:
        align = _ALIGN_BIG if nbytes >= _BIG else _ALIGN_SMALL
        pad = (-self.offset) % align
        if pad:
            self.f.write(b"\0" * pad)
            self.offset += pad
        return self.offset

    def _proto(self, name: str, dims: Sequence[int], data_type: int, off: int, length: int):
        from onnx import TensorProto

        t = TensorProto()
        t.name = name
        t.dims.extend(int(d) for d in dims)
        t.data_type = data_type
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", self.location), ("offset", str(off)), ("length", str(length))):
            e = t.external_data.add()
            e.key, e.value = k, v
        return t

    def add(self, name: str, array: np.ndarray):
        from onnx import helper

        a = np.ascontiguousarray(array)
        off = self._place(a.nbytes)
        self.f.write(a.tobytes(order="C") if a.nbytes < (1 << 24) else memoryview(a.reshape(-1).view(np.uint8)))
        self.offset += a.nbytes
        return self._proto(name, a.shape, helper.np_dtype_to_tensor_dtype(a.dtype), off, a.nbytes)

    def copy(self, proto, raw: np.ndarray):
        off = self._place(raw.nbytes)
        step = 1 << 26
        for i in range(0, raw.nbytes, step):
            self.f.write(memoryview(raw[i : i + step]))
        self.offset += raw.nbytes
        t = self._proto(proto.name, proto.dims, proto.data_type, off, raw.nbytes)
        t.doc_string = proto.doc_string
        return t

    def close(self) -> None:
        self.f.close()


def _load_graph(model_dir: Path):
    import onnx

    path = Path(model_dir) / MODEL_FILE
    if not path.exists():
        raise BuildError(f"{path} does not exist")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises assorted errors on damaged files
        raise CorruptModelError(f"{path} is not a readable ONNX model ({type(e).__name__})") from None


@dataclass(frozen=True)
class GGUFTensor:
    """A tensor of a GGUF file: `data` is its bytes as uint8 [rows, row_bytes] (a view of the mapped file)."""

    name: str
    type_name: str
    shape: tuple[int, ...]  # ggml order: shape[0] is the row length (K for a matrix)
    data: np.ndarray

    @property
    def qtype(self):
        import gguf

        return gguf.GGMLQuantizationType[self.type_name]


_GGUF_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def read_gguf_tensors(gguf_path: Path) -> dict[str, GGUFTensor]:
    """Tensor table of a GGUF file (v2/v3), skipping the metadata values without decoding them.

    `gguf.GGUFReader` decodes every metadata string into its own array (the 300k tokenizer strings of a Qwen2
    file take tens of seconds); only the tensor table is needed here, so this reads the format directly.
    """
    import mmap
    import struct

    import gguf

    gguf_path = Path(gguf_path)
    try:
        with open(gguf_path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as e:
        raise CorruptModelError(f"cannot read {gguf_path}: {e}") from None
    size = len(mm)
    pos = 0

    def take(fmt: str):
        nonlocal pos
        n = struct.calcsize(fmt)
        if pos + n > size:
            raise CorruptModelError(f"{gguf_path} is truncated (in its header)")
        v = struct.unpack_from(fmt, mm, pos)[0]
        pos += n
        return v

    def string() -> str:
        nonlocal pos
        n = take("<Q")
        if pos + n > size:
            raise CorruptModelError(f"{gguf_path} is truncated (in its header)")
        v = bytes(mm[pos : pos + n]).decode("utf-8", errors="replace")
        pos += n
        return v

    def skip_value(vtype: int, count: int = 1) -> None:
        nonlocal pos
        if vtype in _GGUF_SCALAR:
            pos += struct.calcsize(_GGUF_SCALAR[vtype]) * count
        elif vtype == 8:
            for _ in range(count):
                n = take("<Q")
                pos += n
        elif vtype == 9:
            for _ in range(count):
                etype, n = take("<I"), take("<Q")
                skip_value(etype, n)
        else:
            raise CorruptModelError(f"{gguf_path}: unknown metadata value type {vtype}")
        if pos > size:
            raise CorruptModelError(f"{gguf_path} is truncated (in its metadata)")

    if bytes(mm[:4]) != b"GGUF":
        raise CorruptModelError(f"{gguf_path} is not a GGUF file (bad magic bytes)")
    pos = 4
    version = take("<I")
    if version not in (2, 3):
        raise CorruptModelError(f"{gguf_path}: unsupported GGUF version {version}")
    n_tensors, n_kv = take("<Q"), take("<Q")
    alignment = 32
    for _ in range(n_kv):
        key = string()
        vtype = take("<I")
        if key == "general.alignment" and vtype in _GGUF_SCALAR:
            alignment = int(take(_GGUF_SCALAR[vtype]))
        else:
            skip_value(vtype)
    infos = []
    for _ in range(n_tensors):
        name = string()
        ndim = take("<I")
        shape = tuple(int(take("<Q")) for _ in range(ndim))
        ttype, offset = take("<I"), take("<Q")
        infos.append((name, shape, ttype, offset))
    start = pos + (-pos) % alignment
    out: dict[str, GGUFTensor] = {}
    for name, shape, ttype, offset in infos:
        try:
            qtype = gguf.GGMLQuantizationType(ttype)
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise CorruptModelError(f"{gguf_path}: tensor {name} has unknown type {ttype}") from None
        if shape and shape[0] % block:
            raise CorruptModelError(f"{gguf_path}: tensor {name} rows are not whole {qtype.name} blocks")
        row = shape[0] // block * type_size if shape else type_size
        rows = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        begin = start + offset
        if begin + rows * row > size:
            raise CorruptModelError(f"{gguf_path} is truncated: tensor {name} ends past the end of the file")
        data = np.frombuffer(mm, dtype=np.uint8, count=rows * row, offset=begin).reshape(rows, row)
        out[name] = GGUFTensor(name, qtype.name, shape, data)
    return out


def _gguf_tensor(tensors: dict[str, GGUFTensor], name: str) -> GGUFTensor:
    t = tensors.get(name)
    if t is None:
        raise BuildError(f"the GGUF file has no tensor {name}")
    if len(t.shape) != 2:
        raise BuildError(f"GGUF tensor {name} is not a matrix")
    return t


def _gguf_rows(t: GGUFTensor, i: int, j: int) -> np.ndarray:
    """`gguf.quants.dequantize` of rows [i, j) of a matrix, float32 [j - i, K]."""
    import gguf

    try:
        w = gguf.quants.dequantize(t.data[i:j], t.qtype)
    except NotImplementedError:
        raise BuildError(f"gguf cannot dequantize {t.name} ({t.type_name})") from None
    return np.asarray(w, dtype=np.float32).reshape(j - i, int(t.shape[0]))


def _gguf_form(t: GGUFTensor) -> Optional[BlockForm]:
    k, n = int(t.shape[0]), int(t.shape[1])
    return decode_blocks(t.data, t.type_name, n, k)


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.size == 0:
        return 0.0
    m = float(np.max(np.abs(a - b)))
    return float("inf") if np.isnan(m) else m


RowsFn = Callable[[int, int], np.ndarray]


def _compare(parts: Sequence[GGUFTensor], onnx_nk: Optional[np.ndarray], written: Optional[RowsFn],
             fp16: bool = False):
    """Compare, a chunk of rows at a time, gguf's dequantization of the concatenated `parts` [N, K] with the
    builder's fp32 weight `onnx_nk` and with the `written` weights (rows i..j → float32 [j - i, K]).

    Returns (max |onnx - gguf|, max |gguf|, max |written - gguf'|, max |written - gguf|), where gguf' is gguf's
    dequantization rounded once to fp16 when `fp16`, else gguf's dequantization itself."""
    k = int(parts[0].shape[0])
    onnx_err = ref_max = err = raw_err = 0.0
    r0 = 0
    for t in parts:
        rows = int(t.shape[1])
        step = max(1, (1 << 21) // k)
        for i in range(0, rows, step):
            j = min(rows, i + step)
            ref = _gguf_rows(t, i, j)
            ref_max = max(ref_max, float(np.max(np.abs(ref))) if ref.size else 0.0)
            if onnx_nk is not None:
                onnx_err = max(onnx_err, _max_abs_diff(np.asarray(onnx_nk[r0 + i : r0 + j], np.float32), ref))
            if written is not None:
                w = written(r0 + i, r0 + j)
                raw_err = max(raw_err, _max_abs_diff(w, ref))
                if fp16:
                    with np.errstate(over="ignore"):
                        ref = ref.astype(np.float16).astype(np.float32)
                err = max(err, _max_abs_diff(w, ref))
        r0 += rows
    return onnx_err, ref_max, err, raw_err


def _check_mapping(label: str, onnx_nk: np.ndarray, parts: Sequence[GGUFTensor]) -> None:
    """The builder's fp32 weight must be gguf's dequantization of `parts` (up to fp32 rounding)."""
    names = "+".join(t.name for t in parts)
    shape = (sum(int(t.shape[1]) for t in parts), int(parts[0].shape[0]))
    if any(int(t.shape[0]) != shape[1] for t in parts) or tuple(onnx_nk.shape) != shape:
        raise BuildError(f"{label} has shape {tuple(onnx_nk.shape)} but GGUF {names} gives {shape}")
    diff, scale, *_ = _compare(parts, onnx_nk, None)
    if not diff <= 4 * float(np.finfo(np.float32).eps) * scale:
        raise BuildError(
            f"{label} does not match GGUF {names} (max abs difference {diff:.3g}): the fp32 export was not "
            "built from this GGUF, or a tensor mapping or permutation is wrong"
        )


def _nbits_rows(b, scales, zp, bits: int, block: int, k: int, mins=None, min_block: int = 0) -> RowsFn:
    """Rows of MatMulNBits weights (B [N, blocks, blob], scales [N, blocks], packed uint8 zero points or None
    for the default, mins [N, K / min_block] from the correction table) → fp32, as ORT dequantizes them."""
    nb = -(-k // block)

    def rows(i: int, j: int) -> np.ndarray:
        codes = unpack_codes(np.asarray(b[i:j]), bits, nb * block)
        if zp is None:
            z = np.full((j - i, nb), 1 << (bits - 1), np.uint8)
        else:
            z = unpack_zero_points(np.asarray(zp[i:j]), bits, nb)
        form = BlockForm(codes, np.asarray(scales[i:j], np.float32).reshape(j - i, nb), z, bits, block,
                         None if mins is None else np.asarray(mins[i:j], np.float32), min_block)
        return form.dequantize()[:, :k]

    return rows


def _gather_rows(data, scales, zp, bits: int, block: int, k: int) -> RowsFn:
    """Rows of GatherBlockQuantized data ([V, K] bytes for 8 bits, [V, K/2] for 4) → fp32."""
    nb = k // block

    def rows(i: int, j: int) -> np.ndarray:
        codes = unpack_codes(np.asarray(data[i:j]).reshape(j - i, nb, -1), bits, k)
        z = unpack_zero_points(np.asarray(zp[i:j]), bits, nb)
        return BlockForm(codes, np.asarray(scales[i:j], np.float32).reshape(j - i, nb), z, bits, block).dequantize()

    return rows


# --------------------------------------------------------------------------------------------------------------
# transcode
# --------------------------------------------------------------------------------------------------------------


@dataclass
class _Target:
    node_index: int
    node: object
    weight: str
    tensor_class: str
    parts: tuple[str, ...]
    is_gather: bool


def _zero_point_label(forms: Sequence[BlockForm]) -> str:
    labels = []
    for f in forms:
        vals = np.unique(f.zero_points)
        labels.append(str(int(vals[0])) if len(vals) == 1 else "per-block")
    return "|".join(dict.fromkeys(labels))


def _find_targets(graph, inits: _Initializers, gguf_names: Iterable[str]) -> list[_Target]:
    names = list(gguf_names)
    out = []
    for i, node in enumerate(graph.node):
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in inits.protos:
            weight, gather = node.input[1], False
        elif node.op_type == "Gather" and len(node.input) == 2 and node.input[0] in inits.protos:
            weight, gather = node.input[0], True
        else:
            continue
        if len(inits.protos[weight].dims) != 2:
            continue
        mapped = gguf_parts(node.name, names) or gguf_parts(weight, names)
        if mapped is None:
            log.warning("leaving %s (%s) as it is: no GGUF tensor maps to it", node.name, weight)
            continue
        cls, parts = mapped
        if gather != (cls == "embed_tokens"):
            log.warning("leaving %s as it is: unexpected %s for %s", node.name, node.op_type, cls)
            continue
        out.append(_Target(i, node, weight, cls, parts, gather))
    return out


def _node_prefix(node) -> str:
    name = node.name or node.output[0]
    for suffix in ("/MatMul", "/Gather"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _weight_prefix(weight: str) -> str:
    for suffix in (".MatMul.weight", ".weight"):
        if weight.endswith(suffix):
            return weight[: -len(suffix)]
    return weight


def _nbits_nodes(node, prefix: str, qi: list, form: BlockForm, k: int, n: int, accuracy_level: int,
                 block_sums: dict, const: Callable[[str, np.ndarray], str]) -> list:
    """Nodes replacing one MatMul: MatMulNBits, and for a min term Reshape/ReduceSum (shared per input)
    + MatMul with the correction table + Add. The last node writes the MatMul's original output.

    `qi` are the initializers (B, scales, zero points[, correction table]); `const(name, value)` registers a
    small shared constant and returns its name."""
    from onnx import helper

    a_in, out_name = node.input[0], node.output[0]
    nodes = []
    mm_out = out_name if form.mins is None else f"{prefix}/MatMulNBits/output_0"
    key = (a_in, k, form.min_block)
    if form.mins is not None and key not in block_sums:
        mb = form.min_block
        shape = const(f"transcode.block_sum_shape.{k // mb}x{mb}", np.array([0, 0, k // mb, mb], np.int64))
        axes = const("transcode.last_axis", np.array([-1], np.int64))
        reshaped, sums = f"{prefix}/BlockSum/Reshape/output_0", f"{prefix}/BlockSum/ReduceSum/output_0"
        nodes += [
            helper.make_node("Reshape", [a_in, shape], [reshaped], name=f"{prefix}/BlockSum/Reshape"),
            helper.make_node("ReduceSum", [reshaped, axes], [sums], name=f"{prefix}/BlockSum/ReduceSum",
                             keepdims=0),
        ]
        block_sums[key] = sums
    nodes.append(
        helper.make_node(
            "MatMulNBits",
            [a_in, qi[0].name, qi[1].name, qi[2].name],
            [mm_out],
            name=f"{prefix}/MatMulNBits",
            domain=MS_DOMAIN,
            K=k,
            N=n,
            bits=form.bits,
            block_size=form.block,
            accuracy_level=accuracy_level,
        )
    )
    if form.mins is not None:
        corr = f"{prefix}/MinCorrection/MatMul/output_0"
        nodes += [
            helper.make_node("MatMul", [block_sums[key], qi[3].name], [corr], name=f"{prefix}/MinCorrection/MatMul"),
            helper.make_node("Add", [mm_out, corr], [out_name], name=f"{prefix}/MinCorrection/Add"),
        ]
    return nodes


def _nbytes(protos: Iterable) -> int:
    from onnx import helper

    return sum(int(np.prod(t.dims)) * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
               for t in protos)


def transcode(
    fp32_dir: Path,
    gguf_path: Path,
    out_dir: Path,
    *,
    accuracy_level: int = 4,
    progress: bool = True,
) -> TranscodeReport:
    """Rewrite the builder's fp32 graph in `fp32_dir` with the GGUF's own blocks into `out_dir`.

    Writes `out_dir/model.onnx` and `out_dir/model.onnx.data` (one external data file) and copies every
    other file of `fp32_dir` unchanged; `fp32_dir` is only read. `accuracy_level` goes into every MatMulNBits
    node (4: int8 activations, like llama.cpp's q8 dot products; 0/1: fp32). Raises BuildError when a builder
    weight is not the dequantization of the GGUF tensor it maps to (another file, a wrong mapping or a
    permutation), or when a written weight would not dequantize exactly to gguf's values.
    """
    return _transcode(fp32_dir, gguf_path, out_dir, accuracy_level=accuracy_level, progress=progress)


def _transcode(
    fp32_dir: Path,
    gguf_path: Path,
    out_dir: Path,
    *,
    accuracy_level: int = 4,
    progress: bool = True,
    keep_fp32: Optional[Callable[[str, BlockForm], bool]] = None,
) -> TranscodeReport:
    """`transcode`; `keep_fp32(tensor_class, form)` may keep chosen matrices as the builder's fp32 MatMul."""
    from onnx import helper, numpy_helper
    from tqdm import tqdm

    if accuracy_level not in ACCURACY_LEVELS:
        raise BuildError(f"accuracy level must be one of {ACCURACY_LEVELS}, not {accuracy_level}")
    if accuracy_level != 4:
        log.warning("accuracy level %d: ONNX Runtime's CPU MatMulNBits runs 8-bit weights with fp32 activations "
                    "through a slow path (about 30x slower decoding than level 4); serve with level 4",
                    accuracy_level)
    fp32_dir, out_dir, gguf_path = Path(fp32_dir), Path(out_dir), Path(gguf_path)
    if out_dir.resolve() == fp32_dir.resolve():
        raise BuildError("transcode writes into a separate folder, not into the fp32 export")
    model = _load_graph(fp32_dir)
    graph = model.graph
    inits = _Initializers(fp32_dir, graph)
    tensors = read_gguf_tensors(gguf_path)
    targets = _find_targets(graph, inits, tensors)
    if not any(t.tensor_class != "embed_tokens" for t in targets):
        raise BuildError(f"{fp32_dir / MODEL_FILE} has no weight MatMul that maps to a GGUF tensor")
    if not any(op.domain == MS_DOMAIN for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))

    out_dir.mkdir(parents=True, exist_ok=True)
    data_tmp = out_dir / (DATA_FILE + ".part")
    writer = _DataWriter(data_tmp, DATA_FILE)
    new_inits: list = []
    replacement: dict[int, list] = {}
    entries: list[TensorEntry] = []
    block_sums: dict[tuple[str, int, int], str] = {}
    shared: dict[str, object] = {}

    def const(name: str, value: np.ndarray) -> str:
        if name not in shared:
            shared[name] = numpy_helper.from_array(value, name)
        return name

    try:
        for tg in tqdm(targets, desc="transcoding GGUF blocks", unit="tensor", disable=not progress):
            node = tg.node
            parts = [_gguf_tensor(tensors, p) for p in tg.parts]
            types = tuple(t.type_name for t in parts)
            w = inits.array(tg.weight)
            onnx_nk = w if tg.is_gather else w.T
            _check_mapping(tg.weight, onnx_nk, parts)
            n, k = onnx_nk.shape
            del w, onnx_nk
            forms = [_gguf_form(t) for t in parts]
            form = combine(forms) if all(f is not None for f in forms) else None  # type: ignore[arg-type]
            prefix, wprefix, out_name = _node_prefix(node), _weight_prefix(tg.weight), node.output[0]
            zp_label = _zero_point_label(forms) if form is not None else "-"

            if form is not None and tg.is_gather and form.mins is None:
                bits = 4 if form.bits == 4 and (k // form.block) % 2 == 0 else 8
                data = pack_codes(form.codes, bits, form.block).reshape(n, -1) if bits == 4 else form.codes
                zp = pack_zero_points(form.zero_points, bits)
                scales = np.ascontiguousarray(form.scales, dtype=np.float32)
                _, _, err, _ = _compare(parts, None, _gather_rows(data, scales, zp, bits, form.block, k))
                if err != 0.0:
                    raise BuildError(f"transcoding {tg.weight} is not exact (max abs error {err:.3g})")
                qi = [writer.add(f"{wprefix}.qweight", data), writer.add(f"{wprefix}.scales", scales),
                      writer.add(f"{wprefix}.zero_points", zp)]
                replacement[tg.node_index] = [helper.make_node(
                    "GatherBlockQuantized", [qi[0].name, node.input[1], qi[1].name, qi[2].name], [out_name],
                    name=f"{prefix}/GatherBlockQuantized", domain=MS_DOMAIN, gather_axis=0, quantize_axis=1,
                    block_size=form.block, bits=bits,
                )]
                entries.append(TensorEntry(out_name, node.name, tg.weight, tg.tensor_class, tg.parts, types,
                                           "GatherBlockQuantized", bits, form.block, zp_label, False, err,
                                           _nbytes(qi)))
            elif form is not None and not tg.is_gather and not (keep_fp32 and keep_fp32(tg.tensor_class, form)):
                b = pack_codes(form.codes, form.bits, form.block)
                zp = pack_zero_points(form.zero_points, form.bits)
                scales = np.ascontiguousarray(form.scales, dtype=np.float32)
                rows = _nbits_rows(b, scales, zp, form.bits, form.block, k, form.mins, form.min_block)
                _, _, err, _ = _compare(parts, None, rows)
                if err != 0.0:
                    raise BuildError(f"transcoding {tg.weight} is not exact (max abs error {err:.3g})")
                qi = [writer.add(f"{wprefix}.MatMulNBits.qweight", b),
                      writer.add(f"{wprefix}.MatMulNBits.scales", scales),
                      writer.add(f"{wprefix}.MatMulNBits.zero_points", zp)]
                if form.mins is not None:
                    qi.append(writer.add(f"{wprefix}.MatMulNBits.min_correction",
                                         np.ascontiguousarray(form.mins.T, dtype=np.float32)))
                replacement[tg.node_index] = _nbits_nodes(node, prefix, qi, form, k, n, accuracy_level,
                                                          block_sums, const)
                entries.append(TensorEntry(out_name, node.name, tg.weight, tg.tensor_class, tg.parts, types,
                                           "MatMulNBits", form.bits, form.block, zp_label, form.mins is not None,
                                           err, _nbytes(qi)))
            else:
                # the builder's fp32 weight stays: it was checked equal to gguf's dequantization above
                qi = []
                if form is None:
                    log.info("%s (%s) has no exact block form here; kept as fp32", tg.weight, "+".join(types))
                entries.append(TensorEntry(out_name, node.name, tg.weight, tg.tensor_class, tg.parts, types,
                                           node.op_type, None, None, "-", False, 0.0,
                                           _nbytes([inits.protos[tg.weight]])))
            new_inits += qi
            del form, forms

        new_nodes = []
        for i, node in enumerate(graph.node):
            new_nodes.extend(replacement.get(i, [node]))
        used = {name for nd in new_nodes for name in nd.input} | {o.name for o in graph.output}
        kept = []
        for t in graph.initializer:
            if t.name in used:
                kept.append(writer.copy(t, inits.raw(t.name)) if inits.is_external(t.name) else t)
        writer.close()
    except BaseException:
        writer.close()
        data_tmp.unlink(missing_ok=True)
        raise

    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + list(shared.values()) + new_inits)
    os.replace(data_tmp, out_dir / DATA_FILE)
    model_tmp = out_dir / (MODEL_FILE + ".part")
    model_tmp.write_bytes(model.SerializeToString())
    os.replace(model_tmp, out_dir / MODEL_FILE)

    skip = {MODEL_FILE, DATA_FILE} | inits.locations()
    for p in fp32_dir.iterdir():
        if p.name in skip:
            continue
        if p.is_file():
            shutil.copy2(p, out_dir / p.name)
        elif p.is_dir():
            shutil.copytree(p, out_dir / p.name, dirs_exist_ok=True)

    data_bytes = (out_dir / DATA_FILE).stat().st_size
    report = TranscodeReport(tuple(entries), accuracy_level, data_bytes + (out_dir / MODEL_FILE).stat().st_size,
                             data_bytes)
    log.info("transcoded %d tensors into %s (%.1f MB)", len(entries), out_dir, report.total_bytes / 1e6)
    for cls, scheme in report.by_class().items():
        log.info("  %s: %s", cls, scheme)
    return report


# --------------------------------------------------------------------------------------------------------------
# Reading written weights back
# --------------------------------------------------------------------------------------------------------------


def verify(onnx_dir: Path, gguf_path: Path) -> list[TensorCheck]:
    """Read the written weights back, dequantize them, and compare with `gguf.quants.dequantize`.

    One TensorCheck per weight matrix (MatMulNBits with its min correction, GatherBlockQuantized, or an fp32 or
    fp16 MatMul/Gather), plus one with op "missing" and an infinite error for each GGUF matrix that no ONNX weight
    holds. Every error is 0.0 for a correct transcoding. An fp16 weight (the builder's CUDA graphs) is compared
    with gguf's dequantization rounded once to fp16, so its error is 0.0 too when nothing else touched it; its
    `rounding_error` records how far that rounding moved it (at most 2^-11 relative)."""
    onnx_dir = Path(onnx_dir)
    graph = _load_graph(onnx_dir).graph
    inits = _Initializers(onnx_dir, graph)
    tensors = read_gguf_tensors(gguf_path)
    producers = {o: nd for nd in graph.node for o in nd.output}
    consumers: dict[str, list] = {}
    for nd in graph.node:
        for i in nd.input:
            consumers.setdefault(i, []).append(nd)

    def attr(nd, name, default=None):
        return next((a.i for a in nd.attribute if a.name == name), default)

    def correction_of(nd):
        """(table [K/mb, N], mb, output name, correction MatMul name) after a MatMulNBits node, or None."""
        outs = consumers.get(nd.output[0], [])
        if len(outs) != 1 or outs[0].op_type != "Add":
            return None
        add = outs[0]
        other = add.input[1] if add.input[0] == nd.output[0] else add.input[0]
        mm = producers.get(other)
        if mm is None or mm.op_type != "MatMul" or mm.input[1] not in inits.protos:
            return None
        rs = producers.get(mm.input[0])
        rsh = producers.get(rs.input[0]) if rs is not None and rs.op_type == "ReduceSum" else None
        if rsh is None or rsh.op_type != "Reshape" or rsh.input[0] != nd.input[0]:
            return None
        return inits.array(mm.input[1]), int(inits.array(rsh.input[1])[-1]), add.output[0], mm.name

    corrections = {nd.name: c for nd in graph.node
                   if nd.op_type == "MatMulNBits" and nd.domain == MS_DOMAIN and (c := correction_of(nd))}
    skip = {c[3] for c in corrections.values()}
    checks: list[TensorCheck] = []
    covered: set[str] = set()
    for nd in graph.node:
        kind, name = nd.op_type, nd.output[0] if nd.output else ""
        if nd.name in skip or "/lora/" in nd.name:  # LoRA branches (model/lora.py) carry no base weights
            continue
        if kind == "MatMulNBits" and nd.domain == MS_DOMAIN:
            k, bits, block = attr(nd, "K"), attr(nd, "bits", 4), attr(nd, "block_size")
            zp = inits.array(nd.input[3]) if len(nd.input) > 3 and nd.input[3] else None
            if zp is not None and zp.dtype != np.uint8:
                raise BuildError(f"{nd.name}: float zero points are not a transcoded form")
            corr = corrections.get(nd.name)
            mins, mb = (None, 0) if corr is None else (corr[0].T, corr[1])
            name = name if corr is None else corr[2]
            rows = _nbits_rows(inits.array(nd.input[1]), inits.array(nd.input[2]), zp, bits, block, k, mins, mb)
            shape = (attr(nd, "N"), k)
            weight, dtype = nd.input[1], "blocks"
        elif kind == "GatherBlockQuantized" and nd.domain == MS_DOMAIN:
            bits, block = attr(nd, "bits", 4), attr(nd, "block_size")
            data, scales = inits.array(nd.input[0]), inits.array(nd.input[2])
            k = scales.shape[1] * block
            zp = inits.array(nd.input[3]) if len(nd.input) > 3 and nd.input[3] else \
                pack_zero_points(np.full(scales.shape, 1 << (bits - 1), np.uint8), bits)
            rows = _gather_rows(data, scales, zp, bits, block, k)
            shape = (data.shape[0], k)
            weight, dtype = nd.input[0], "blocks"
        elif kind in ("MatMul", "Gather") and nd.domain in ("", "ai.onnx"):
            weight = nd.input[1] if kind == "MatMul" else nd.input[0]
            if weight not in inits.protos or len(inits.protos[weight].dims) != 2:
                continue
            w = inits.array(weight)
            if w.dtype not in (np.float32, np.float16):
                continue
            dtype = str(w.dtype)
            w = w.T if kind == "MatMul" else w

            def rows(i, j, w=w):
                return np.asarray(w[i:j], np.float32)

            shape = tuple(w.shape)
        else:
            continue
        mapped = gguf_parts(nd.name, tensors) or gguf_parts(weight, tensors)
        if mapped is None:
            continue
        parts = [_gguf_tensor(tensors, p) for p in mapped[1]]
        ref_shape = (sum(int(t.shape[1]) for t in parts), int(parts[0].shape[0]))
        err = rounding = float("inf")
        if tuple(shape) == ref_shape:
            _, _, err, rounding = _compare(parts, None, rows, fp16=dtype == "float16")
        checks.append(TensorCheck(name, mapped[1], tuple(t.type_name for t in parts), kind, err,
                                  ref_shape[0] * ref_shape[1], dtype,
                                  rounding if dtype == "float16" else 0.0, mapped[0]))
        covered.update(mapped[1])
    for gname, t in tensors.items():
        if len(t.shape) == 2 and gname.endswith(".weight") and gname not in covered:
            checks.append(TensorCheck("", (gname,), (t.type_name,), "missing", float("inf"), 0))
    return checks
