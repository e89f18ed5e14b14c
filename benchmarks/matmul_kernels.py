"""Where CPU prefill time goes: ONNX Runtime's kernels for each weight form of the served model, side by side.

Prefill on two cores is compute-bound, and ~85 % of it is the projections (an ORT profile of the exact 1.5B model
over a 512-token prompt: MatMulNBits 7.1 of 8.4 s). This script times one projection of each kind (q|k|v, o,
gate, up, down) of the chosen model, built from its GGUF's *real* blocks (one layer per distinct set of GGUF
types), in every form a projection can take, at decode (1, 8 rows) and prefill (128, 512 rows) batch sizes:

- `exact acc4`: the served form (`intarsia.model.transcode`: MatMulNBits with the GGUF's own codes, min
  correction where the format has one), int8 activations (accuracy level 4);
- `exact acc1`: the same weights, fp32 activations (ORT dequantizes blocks and runs its fp32 GEMM);
- `fp32 dense`: gguf's dequantization as an fp32 MatMul (exact too; 4 bytes a weight);
- `int8 per-channel`: DynamicQuantizeMatMul with one scale per output column, ONNX Runtime's int8 GEMM (AMX or
  VNNI where the CPU has them). It is *not* exact (a second quantization of every weight and a per-tensor
  activation scale): it is the ceiling of what the CPU's integer units give ORT, for reference.

    python benchmarks/matmul_kernels.py [--model qwen2.5-coder-1.5b] [--rows 1,8,128,512] [--threads 2]

Prints one JSON object: per projection and form, milliseconds (best of --rounds, each --repeats runs) and GFLOP/s
(2·rows·K·N / time), plus each form's prefill time for the whole model at 128 and 512 rows relative to `exact
acc4` (the projections' sum over layers; attention and the rest are not included).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# GGUF tensors of one layer, as the builder's graph multiplies them (q|k|v packed along N).
PROJECTIONS = {
    "attn_qkv": ("attn_q", "attn_k", "attn_v"),
    "attn_o": ("attn_output",),
    "mlp_gate": ("ffn_gate",),
    "mlp_up": ("ffn_up",),
    "mlp_down": ("ffn_down",),
}
FORMS = ("exact acc4", "exact acc1", "fp32 dense", "int8 per-channel")


def _session(nodes: list, inits: list, k: int, threads: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, "projection", [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def exact_session(form, k: int, n: int, accuracy_level: int, threads: int):
    """The served form: the nodes `transcode` writes for this block form (on [M, K] activations)."""
    from onnx import helper, numpy_helper

    from intarsia.model.transcode import _nbits_nodes, pack_codes, pack_zero_points

    inits = [numpy_helper.from_array(pack_codes(form.codes, form.bits, form.block), "B"),
             numpy_helper.from_array(np.ascontiguousarray(form.scales, np.float32), "S"),
             numpy_helper.from_array(pack_zero_points(form.zero_points, form.bits), "Z")]
    if form.mins is not None:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(form.mins.T, np.float32), "T"))
    consts: list = []

    def const(name: str, value: np.ndarray) -> str:
        if name not in {c.name for c in consts}:
            # the served graph's activations are [batch, sequence, K]; here [M, K]: drop the batch axis
            if name.startswith("transcode.block_sum_shape"):
                value = value[1:]
            consts.append(numpy_helper.from_array(value, name))
        return name

    matmul = helper.make_node("MatMul", ["A", "W"], ["Y"], name="/proj/MatMul")
    nodes = _nbits_nodes(matmul, "/proj", inits, form, k, n, accuracy_level, {}, const)
    return _session(nodes, inits + consts, k, threads)


def dense_session(w_nk: np.ndarray, threads: int):
    from onnx import helper, numpy_helper

    k = w_nk.shape[1]
    inits = [numpy_helper.from_array(np.ascontiguousarray(w_nk.T, np.float32), "W")]
    return _session([helper.make_node("MatMul", ["A", "W"], ["Y"])], inits, k, threads)


# int8 weights in [-63, 63] ("reduce range", as ONNX Runtime's own quantizer does for CPUs without VNNI): AVX2's
# u8 x s8 multiply-add sums two products in a saturating int16, which 255 * 127 * 2 overflows; 7-bit weights keep
# every CPU's result the exact integer product, at the same speed.
INT8_WEIGHT_MAX = 63


def int8_quantized(w_nk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weights, per-row scale) of the int8 per-channel form."""
    scale = np.maximum(np.abs(w_nk).max(axis=1), 1e-12) / INT8_WEIGHT_MAX
    q = np.clip(np.round(w_nk / scale[:, None]), -INT8_WEIGHT_MAX, INT8_WEIGHT_MAX).astype(np.int8)
    return q, scale.astype(np.float32)


def int8_error_bound(a: np.ndarray, w_nk: np.ndarray) -> np.ndarray:
    """The largest error the int8 per-channel form can make for each output of a @ w.T: half a weight step times
    |a|, half an activation step (uint8, per tensor) times |w|, and their product, summed over k."""
    _, scale = int8_quantized(w_nk)
    step_a = max(float(a.max()) - float(min(a.min(), 0.0)), 1e-12) / 255.0
    return (np.abs(a) @ np.ones_like(w_nk).T) * (scale[None, :] / 2) + step_a / 2 * np.abs(w_nk).sum(axis=1)[None, :] \
        + step_a * scale[None, :] / 4 * w_nk.shape[1]


def int8_session(w_nk: np.ndarray, threads: int):
    from onnx import helper, numpy_helper

    k = w_nk.shape[1]
    q, scale = int8_quantized(w_nk)
    inits = [numpy_helper.from_array(np.ascontiguousarray(q.T), "W"), numpy_helper.from_array(scale, "S")]
    node = helper.make_node("DynamicQuantizeMatMul", ["A", "W", "S"], ["Y"], domain="com.microsoft")
    return _session([node], inits, k, threads)


def time_ms(sess, a: np.ndarray, repeats: int, rounds: int) -> float:
    feeds = {"A": a}
    sess.run(None, feeds)
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(repeats):
            sess.run(None, feeds)
        best = min(best, (time.perf_counter() - t) / repeats * 1000)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--rows", default="1,8,128,512", help="activation rows (tokens in one call)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from engines import machine

    from intarsia.model.build import resolve_gguf
    from intarsia.model.registry import resolve_source
    from intarsia.model.transcode import _gguf_rows, combine, decode_blocks, read_gguf_tensors

    src = resolve_source(args.model)
    gguf = resolve_gguf(src, progress=True)
    tensors = read_gguf_tensors(gguf)
    layers = 1 + max(int(n.split(".")[1]) for n in tensors if n.startswith("blk."))
    rows = [int(r) for r in args.rows.split(",")]
    rng = np.random.default_rng(0)
    out: dict = {}
    for proj, parts in PROJECTIONS.items():
        # layers whose GGUF types differ get different forms (Q4_K_M alternates Q4_K / Q6_K): one of each
        groups: dict[tuple, list[int]] = {}
        for layer in range(layers):
            types = tuple(tensors[f"blk.{layer}.{p}.weight"].type_name for p in parts)
            groups.setdefault(types, []).append(layer)
        for types, members in groups.items():
            ts = [tensors[f"blk.{members[0]}.{p}.weight"] for p in parts]
            k = int(ts[0].shape[0])
            form = combine([decode_blocks(t.data, t.type_name, int(t.shape[1]), k) for t in ts])
            n = form.shape[0]
            w = np.concatenate([_gguf_rows(t, 0, int(t.shape[1])) for t in ts])
            sessions = {
                "exact acc4": exact_session(form, k, n, 4, args.threads),
                "exact acc1": exact_session(form, k, n, 1, args.threads),
                "fp32 dense": dense_session(w, args.threads),
                "int8 per-channel": int8_session(w, args.threads),
            }
            entry = {"gguf_types": list(types), "layers": len(members), "K": k, "N": n,
                     "exact_form": f"{form.bits}-bit/{form.block}" + (" + min correction" if form.mins is not None
                                                                      else ""),
                     "rows": {}}
            for m in rows:
                a = rng.standard_normal((m, k), dtype=np.float32)
                want = a @ w.T
                cell = {}
                for name, sess in sessions.items():
                    ms = time_ms(sess, a, 30 if m <= 8 else 3, args.rounds)
                    got = sess.run(None, {"A": a})[0]
                    rel = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
                    cell[name] = {"ms": round(ms, 3), "gflops": round(2 * m * k * n / ms / 1e6, 1),
                                  "max_rel_error": float(f"{rel:.3g}")}
                entry["rows"][str(m)] = cell
                print(f"{proj} {'+'.join(types)} {k}x{n} rows {m}: "
                      + ", ".join(f"{f} {c['ms']:.2f} ms" for f, c in cell.items()), file=sys.stderr, flush=True)
            out[f"{proj} {'+'.join(types)}"] = entry
            del sessions, w

    model_ms = {str(m): {f: round(sum(e["layers"] * e["rows"][str(m)][f]["ms"] for e in out.values()), 1)
                         for f in FORMS} for m in rows}
    relative = {m: {f: round(v / t["exact acc4"], 3) for f, v in t.items()} for m, t in model_ms.items()}
    print(json.dumps({
        "benchmark": "matmul_kernels",
        "model": src.name,
        "layers": layers,
        "threads": args.threads,
        "machine": machine(),
        "projections": out,
        "projection_ms_per_call_all_layers": model_ms,
        "relative_to_exact_acc4": relative,
    }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
