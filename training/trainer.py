"""LoRA fine-tuning with peft: packed FIM sequences, resumable checkpoints, one CPU, one GPU or several GPUs.

Each example is tokenized as prompt + middle + end token; only the middle and the end token carry a loss. Examples
are packed first-fit into sequences of at most `context_length` tokens, with position ids restarting at every
example and no attention mask, which transformers turns into a block-diagonal causal mask (no example sees
another). One packed sequence is a micro-batch; `batch_tokens` sets how many tokens one optimizer step sees
(gradient accumulation). fp32 on a CPU, bf16 autocast on CUDA; gradient checkpointing on CUDA by default (on a
CPU memory is plentiful and the recomputation costs a third of the speed). The loop runs under `accelerate`:
`accelerate launch $(which intarsia) train REPO` spreads the micro-batches over the processes, and only the main
process writes checkpoints and the result.

Checkpoints (`run_dir/checkpoints/step-N/`: the LoRA weights, optimizer, scheduler, RNG and position) are written
into a temporary folder and renamed; a run with the same data and settings resumes from the newest one.

Time budgets (`training.budget`): with `plan`, the number of steps is not fixed in advance. The first optimizer step
measures the throughput (packed tokens/s, the first micro-batch left out when the step has several: it carries the
warm-up) and `plan` turns it into the number of steps; the learning-rate schedule (linear warm-up, cosine decay, as
transformers' `get_cosine_schedule_with_warmup`, except that the warm-up's first rate is not zero: with a short
budget the first step may be most of the run, and a step at rate zero changes nothing) reads that number; planning
after the first step changes only the rates still to come. A resumed run (the same data and settings; `plan` again)
plans again after its own first step, with the steps already taken counted (`Calibration.done_steps`): a later
command has a budget of its own. With `deadline`, the loop stops before a step that the previous step's duration
says would end past it: the checkpoint of the last step is written and the adapter saved, and the result says why
it stopped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from intarsia.model.errors import IntarsiaError
from intarsia.model.lora import LORA_TARGETS
from intarsia.model.trust import check_hf_folder, check_peft_folder

log = logging.getLogger(__name__)

IGNORE = -100


class TrainError(IntarsiaError):
    pass


@dataclass(frozen=True)
class TrainConfig:
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = LORA_TARGETS
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    max_grad_norm: float = 1.0
    epochs: float = 1.0
    max_steps: int = 0  # 0: as many as `epochs` needs
    batch_tokens: int = 8192
    context_length: int = 1024
    gradient_checkpointing: Optional[bool] = None  # None: on for CUDA, off on a CPU
    save_every: int = 25
    seed: int = 0

    def validate(self) -> "TrainConfig":
        if self.rank < 1 or self.alpha <= 0:
            raise TrainError("LoRA rank must be ≥1 and alpha > 0")
        if not 0 <= self.dropout < 1:
            raise TrainError("dropout must be in [0, 1)")
        if self.learning_rate <= 0:
            raise TrainError("learning rate must be > 0")
        if self.context_length < 64:
            raise TrainError("context length must be at least 64 tokens")
        if self.batch_tokens < self.context_length:
            raise TrainError("batch tokens must be at least the context length")
        unknown = set(self.target_modules) - set(LORA_TARGETS)
        if unknown:
            raise TrainError(f"unknown LoRA target module(s) {sorted(unknown)} (known: {', '.join(LORA_TARGETS)})")
        return self


@dataclass
class Tokenized:
    ids: list[int]
    labels: list[int]


@dataclass
class TrainResult:
    adapter_dir: Path
    steps: int
    tokens: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    first_loss: Optional[float] = None
    last_loss: Optional[float] = None
    resumed_from: Optional[int] = None
    device: str = "cpu"
    processes: int = 1
    peak_rss_mb: Optional[float] = None
    planned_steps: Optional[int] = None
    measured_tokens_per_s: Optional[float] = None  # the first step's throughput (all processes)
    stopped: Optional[str] = None  # why training ended before `planned_steps` ("time budget")

    def record(self) -> dict:
        d = asdict(self)
        d["adapter_dir"] = str(self.adapter_dir)
        d["tokens_per_s"] = round(self.tokens / self.seconds, 1) if self.seconds else None
        d["losses"] = [round(x, 4) for x in self.losses]
        return d


@dataclass(frozen=True)
class Calibration:
    """What the first optimizer step measured, and the packed sequences the steps go through, for `plan`."""

    tokens_per_s: float
    seconds: float
    bin_tokens: tuple[int, ...]  # tokens of each packed sequence, in the first epoch's training order
    bin_examples: tuple[int, ...]  # examples in each
    sequences_per_step: int
    done_steps: int = 0  # steps taken by an earlier run this one resumed (the plan's total counts them)


def cosine_with_warmup(step: int, total: int, warmup_ratio: float) -> float:
    """The learning-rate factor at `step` of `total`: transformers' cosine schedule with linear warm-up, the
    warm-up starting at 1/(w+1) of the peak instead of 0 (w: the warm-up's steps), so that every step learns."""
    warm = max(1, int(total * warmup_ratio))
    if step < warm:
        return (step + 1) / (warm + 1)
    progress = (step - warm) / max(1, total - warm)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def tokenize(tokenizer, prompt: str, middle: str, eos_id: int) -> Tokenized:
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    m = tokenizer(middle, add_special_tokens=False)["input_ids"] + [eos_id]
    return Tokenized(p + m, [IGNORE] * len(p) + m)


def pack(examples: Sequence[Tokenized], context_length: int) -> list[list[int]]:
    """First-fit-decreasing bins of example indices, each at most `context_length` tokens; longer examples are
    dropped (the caller renders prompts within the context length)."""
    order = sorted((i for i, e in enumerate(examples) if len(e.ids) <= context_length),
                   key=lambda i: -len(examples[i].ids))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(examples[i].ids)
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(context_length - n)
    return bins


def sequences_per_step(config: TrainConfig, world: int = 1) -> int:
    """Packed sequences one optimizer step goes through (`batch_tokens` / `context_length`, a multiple of the
    process count)."""
    n = max(1, round(config.batch_tokens / config.context_length))
    return max(world, n - n % world)


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n))
    random.Random(seed * 1000 + epoch).shuffle(order)
    return order


def first_epoch(examples: Sequence[Tokenized], config: TrainConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(tokens, examples) of each packed sequence in the order `train_lora` goes through them first (one process):
    what a plan made before training counts with."""
    bins = pack(examples, config.context_length)
    order = _epoch_order(len(bins), config.seed, 0)
    return (tuple(sum(len(examples[i].ids) for i in bins[b]) for b in order), tuple(len(bins[b]) for b in order))


def _sequence(examples: Sequence[Tokenized], bin_: list[int]):
    import torch

    ids, labels, pos = [], [], []
    for i in bin_:
        e = examples[i]
        ids += e.ids
        labels += e.labels
        pos += list(range(len(e.ids)))
    t = lambda x: torch.tensor([x], dtype=torch.long)  # noqa: E731
    return t(ids), t(labels), t(pos)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda: no CUDA device is available (torch sees none)")
    if device not in ("cpu", "cuda"):
        raise TrainError(f"unknown device '{device}' (auto, cpu or cuda)")
    return device


def _latest_checkpoint(run_dir: Path) -> Optional[Path]:
    ck = run_dir / "checkpoints"
    if not ck.is_dir():
        return None
    steps = []
    for p in ck.iterdir():
        if p.name.startswith("step-") and (p / "state.json").exists():
            try:
                steps.append((int(p.name[5:]), p))
            except ValueError:
                continue
    return max(steps)[1] if steps else None


def _rss_mb() -> Optional[float]:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except Exception:
        return None


def train_lora(
    hf_dir: Path,
    examples: Sequence[Tokenized],
    run_dir: Path,
    config: TrainConfig = TrainConfig(),
    *,
    device: str = "auto",
    progress: bool = True,
    stop_after: Optional[int] = None,
    on_step: Optional[Callable[[int, float], None]] = None,
    init_adapter: Optional[Path] = None,
    plan: Optional[Callable[[Calibration], int]] = None,
    deadline: Optional[float] = None,
) -> TrainResult:
    """Train a LoRA adapter on top of the Hugging Face model in `hf_dir`; the peft folder ends in
    `run_dir/adapter`. `stop_after` ends the run early after that many optimizer steps of this call (the run
    stays resumable: used to test interruption). `init_adapter`: a peft folder of the same rank, alpha and
    target modules whose weights the new adapter starts from (it continues that adapter). `plan`: called once,
    after the first step, with what it measured; returns the number of steps (see the module docstring).
    `deadline` (a `time.monotonic()` value): stop before a step that would end past it."""
    import torch
    from accelerate import Accelerator
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    config.validate()
    device = resolve_device(device)
    cuda = device == "cuda"
    accelerator = Accelerator(cpu=not cuda, mixed_precision="bf16" if cuda else "no")
    world, rank = accelerator.num_processes, accelerator.process_index
    bins = pack(examples, config.context_length)
    if not bins:
        raise TrainError("no training example fits the context length")
    seq_per_step = sequences_per_step(config, world)
    steps_per_epoch = max(1, math.ceil(len(bins) / seq_per_step))
    total_steps = config.max_steps or max(1, math.ceil(steps_per_epoch * config.epochs))
    accum = seq_per_step // world

    torch.manual_seed(config.seed)
    check_hf_folder(hf_dir)  # no auto_map code, no pickle-only weights (model.trust)
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32, trust_remote_code=False,
                                                 use_safetensors=True)
    model.config.use_cache = False
    gc = config.gradient_checkpointing if config.gradient_checkpointing is not None else cuda
    if gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lcfg = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                      target_modules=list(config.target_modules), task_type="CAUSAL_LM")
    model = get_peft_model(model, lcfg)
    if init_adapter is not None:
        from safetensors.torch import load_file

        check_init_adapter(init_adapter, config)
        result = set_peft_model_state_dict(model, load_file(str(Path(init_adapter) / "adapter_model.safetensors")))
        missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
        if missing:
            raise TrainError(f"{init_adapter} lacks {len(missing)} LoRA weight(s) of this model, e.g. {missing[0]}")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    # The schedule reads the planned total when it is asked, so that a plan made after the first step applies.
    schedule = {"total": total_steps}
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_with_warmup(s, schedule["total"], config.warmup_ratio))

    step, tokens_done, losses, resumed = 0, 0, [], None
    planned = False
    ck = _latest_checkpoint(run_dir)
    if ck is not None:
        state = json.loads((ck / "state.json").read_text())
        same_plan = state.get("total_steps") == total_steps or (plan is not None and state.get("planned"))
        if same_plan and state.get("bins") == len(bins):
            from safetensors.torch import load_file

            set_peft_model_state_dict(model, load_file(str(ck / "adapter.safetensors")))
            # weights_only: tensors and plain containers, never an arbitrary pickle (a run folder is data too).
            optimizer.load_state_dict(torch.load(ck / "optimizer.pt", weights_only=True))
            scheduler.load_state_dict(torch.load(ck / "scheduler.pt", weights_only=True))
            torch.set_rng_state(torch.load(ck / "rng.pt", weights_only=True))
            step, tokens_done, losses = state["step"], state["tokens"], state["losses"]
            total_steps = schedule["total"] = int(state["total_steps"])
            planned = bool(state.get("planned"))
            resumed = step
            log.info("resuming from %s (step %d of %d)", ck, step, total_steps)
        else:
            log.warning("checkpoint %s belongs to a different plan; starting over", ck)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    model.train()

    order = list(range(len(bins)))
    epoch_orders: dict[int, list[int]] = {}

    def epoch_order(epoch: int) -> list[int]:
        if epoch not in epoch_orders:
            epoch_orders.clear()
            epoch_orders[epoch] = _epoch_order(len(order), config.seed, epoch)
        return epoch_orders[epoch]

    def seq_at(k: int) -> list[int]:
        epoch, pos = divmod(k, len(order))
        return bins[epoch_order(epoch)[pos]]

    bar = None
    if progress and accelerator.is_main_process:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
    t0 = time.perf_counter()
    tokens_this_call = 0
    steps_this_call = 0
    measured = None
    stopped = None
    last_step_s = 0.0
    while step < total_steps:
        if deadline is not None and steps_this_call > 0 and \
                _agree(accelerator, time.monotonic() + last_step_s > deadline):
            stopped = "time budget"
            break
        t_step = time.perf_counter()
        t_rest, rest_tokens = None, 0  # the step without its first micro-batch (warm-up), for the measurement
        step_loss, step_tokens = 0.0, 0
        for j in range(accum):
            if j == 1:
                t_rest = time.perf_counter()
            k = step * seq_per_step + j * world + rank
            ids, labels, pos = _sequence(examples, seq_at(k))
            ids, labels, pos = (x.to(accelerator.device) for x in (ids, labels, pos))
            sync = accelerator.no_sync(model) if (j < accum - 1 and world > 1) else _null()
            with sync, accelerator.autocast():
                loss = packed_loss(model, ids, labels, pos) / accum
            accelerator.backward(loss)
            step_loss += float(loss.detach())
            step_tokens += ids.shape[1]
            if j >= 1:
                rest_tokens += ids.shape[1]
        if config.max_grad_norm:
            accelerator.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        steps_this_call += 1
        tokens_done += step_tokens * world
        tokens_this_call += step_tokens * world
        losses.append(step_loss)
        now = time.perf_counter()
        last_step_s = now - t_step
        if steps_this_call == 1:
            if t_rest is not None and rest_tokens and now > t_rest:
                measured = rest_tokens * world / (now - t_rest)
            else:
                measured = step_tokens * world / max(last_step_s, 1e-9)
            if plan is not None:
                first = epoch_order(0)
                cal = Calibration(measured, last_step_s, tuple(sum(len(examples[i].ids) for i in bins[b])
                                                               for b in first),
                                  tuple(len(bins[b]) for b in first), seq_per_step, done_steps=step - 1)
                total_steps = max(step, int(_agree(accelerator, plan(cal) if accelerator.is_main_process else 0)))
                schedule["total"] = total_steps
                planned = True
                if bar is not None:
                    bar.total = total_steps
                    bar.refresh()
        if on_step is not None:
            on_step(step, step_loss)
        if bar is not None:
            el = time.perf_counter() - t0
            bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{tokens_this_call / el:.0f}" if el else "-")
            bar.update(1)
        last = step == total_steps or (stop_after is not None and steps_this_call >= stop_after) or \
            (deadline is not None and time.monotonic() + last_step_s > deadline)
        if accelerator.is_main_process and (step % config.save_every == 0 or last):
            _save_checkpoint(accelerator.unwrap_model(model), optimizer, scheduler, run_dir, step,
                             {"step": step, "tokens": tokens_done, "losses": losses, "total_steps": total_steps,
                              "bins": len(bins), "planned": planned}, get_peft_model_state_dict)
        accelerator.wait_for_everyone()
        if stop_after is not None and steps_this_call >= stop_after and step < total_steps:
            if bar is not None:
                bar.close()
            raise KeyboardInterrupt(f"stopped after {steps_this_call} step(s) (stop_after)")
    if bar is not None:
        bar.close()
    latest = _latest_checkpoint(run_dir) if stopped and accelerator.is_main_process else None
    if stopped and accelerator.is_main_process and (latest is None or latest.name != f"step-{step}"):
        _save_checkpoint(accelerator.unwrap_model(model), optimizer, scheduler, run_dir, step,
                         {"step": step, "tokens": tokens_done, "losses": losses, "total_steps": total_steps,
                          "bins": len(bins), "planned": planned}, get_peft_model_state_dict)
    seconds = time.perf_counter() - t0
    if stopped:
        log.info("stopped at step %d of %d: %s", step, total_steps, stopped)
    adapter_dir = run_dir / "adapter"
    if accelerator.is_main_process:
        tmp = run_dir / ".adapter.part"
        shutil.rmtree(tmp, ignore_errors=True)
        accelerator.unwrap_model(model).save_pretrained(str(tmp))
        shutil.rmtree(adapter_dir, ignore_errors=True)
        os.replace(tmp, adapter_dir)
    accelerator.wait_for_everyone()
    head = [x for x in losses[: max(1, len(losses) // 10)]]
    tail = [x for x in losses[-max(1, len(losses) // 10):]]
    return TrainResult(adapter_dir, step, tokens_this_call, seconds, losses,
                       first_loss=sum(head) / len(head) if head else None,
                       last_loss=sum(tail) / len(tail) if tail else None,
                       resumed_from=resumed, device=device, processes=world, peak_rss_mb=_rss_mb(),
                       planned_steps=total_steps, measured_tokens_per_s=round(measured, 2) if measured else None,
                       stopped=stopped)


def _agree(accelerator, value):
    """The main process's `value` on every process (one process: `value`), so that all take the same decision."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def check_init_adapter(folder: Path, config: TrainConfig) -> None:
    """Raise TrainError unless the peft adapter in `folder` has `config`'s rank, alpha and target modules (and
    UntrustedModelError when its weights are only a pickle)."""
    check_peft_folder(folder)
    try:
        cfg = json.loads((Path(folder) / "adapter_config.json").read_text())
    except (OSError, ValueError) as e:
        raise TrainError(f"cannot read the adapter to start from ({folder}): {e}") from None
    got = (int(cfg.get("r", 0)), float(cfg.get("lora_alpha", 0)), sorted(cfg.get("target_modules") or []))
    want = (config.rank, float(config.alpha), sorted(config.target_modules))
    if got != want:
        raise TrainError(f"the adapter to start from ({folder}) has rank {got[0]}, alpha {got[1]:g}, targets "
                         f"{','.join(got[2])}; this run has rank {want[0]}, alpha {want[1]:g}, targets "
                         f"{','.join(want[2])}")


def packed_loss(model, ids, labels, pos):
    """Mean cross-entropy over the labelled tokens of one packed sequence. The output layer runs only at the
    positions that predict a labelled token (`logits_to_keep` with their indices): with a 150k-token vocabulary
    it is about a quarter of a small model's compute, and a FIM example labels only its middle."""
    import torch
    import torch.nn.functional as F

    targets_at = (labels[0, 1:] != IGNORE).nonzero(as_tuple=True)[0]
    if targets_at.numel() == 0:
        out = model(input_ids=ids, position_ids=pos, use_cache=False, logits_to_keep=1)
        return out.logits.sum() * 0.0
    out = model(input_ids=ids, position_ids=pos, use_cache=False, logits_to_keep=targets_at)
    logits = out.logits[0].float()
    return F.cross_entropy(logits, labels[0, targets_at + 1].to(torch.long))


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _save_checkpoint(model, optimizer, scheduler, run_dir: Path, step: int, state: dict, get_state) -> None:
    import torch
    from safetensors.torch import save_file

    ck = run_dir / "checkpoints"
    ck.mkdir(parents=True, exist_ok=True)
    final = ck / f"step-{step}"
    tmp = ck / f".step-{step}.part"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    sd = {k: v.detach().cpu().contiguous() for k, v in get_state(model).items()}
    save_file(sd, str(tmp / "adapter.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(torch.get_rng_state(), tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(state))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in ck.iterdir():  # keep the newest two
        if old.name.startswith("step-") and old != final:
            try:
                if int(old.name[5:]) < step - 1 and len(list(ck.glob("step-*"))) > 2:
                    shutil.rmtree(old, ignore_errors=True)
            except ValueError:
                pass


def perplexity(model, examples: Sequence[Tokenized], *, device: str = "cpu", limit: int = 32) -> Optional[float]:
    """exp(mean loss per middle token) over up to `limit` examples (model: a transformers causal LM)."""
    import torch

    total, n = 0.0, 0
    model.eval()
    with torch.no_grad():
        for e in examples[:limit]:
            ids = torch.tensor([e.ids], device=device)
            labels = torch.tensor([e.labels], device=device)
            k = sum(1 for x in e.labels[1:] if x != IGNORE)
            if k == 0:
                continue
            out = model(input_ids=ids, labels=labels, use_cache=False)
            total += float(out.loss) * k
            n += k
    return math.exp(total / n) if n else None


__all__ = ["Calibration", "TrainConfig", "TrainError", "TrainResult", "Tokenized", "check_init_adapter",
           "cosine_with_warmup", "first_epoch", "pack", "packed_loss", "perplexity", "resolve_device",
           "sequences_per_step", "tokenize", "train_lora"]
