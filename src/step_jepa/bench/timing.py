"""The timing harness of ``step-jepa bench``: its config and result row, timed optimizer steps of
one variant, the memory probes (CUDA peak allocation, or the process's peak RSS on CPU), an
optional profiler trace, and the environment a result was measured in. :mod:`step_jepa.bench.run`
builds the variants and calls :func:`run_variant`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from step_jepa.method.options import JEPAOptions
from step_jepa.models.environment import device_name, utc_timestamp, versions

# The variants `step-jepa bench` runs without --variants (step_jepa.bench.run lists them all).
DEFAULT_VARIANTS = [
    "hf_sft",
    "sft",
    "two_pass",
    "sp_first",
    "sp_all",
    "hf_sft_packed",
    "sft_packed",
    "two_pass_packed",
    "sp_first_packed",
    "sp_all_packed",
]


def _opt(default: Any, help: str, **kw: Any) -> Any:
    """A BenchConfig field with its flag's help (and argparse options such as `choices`)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class BenchConfig(JEPAOptions):
    """The options of `step-jepa bench`: its flags, parsed like train's (`step_jepa.training.options`).

    The JEPA options are `JEPAOptions`' (train's flags, defaults and help); the others carry
    train's names where train has the option. Each variant sets its own layout: --jepa_mode,
    --pairs, --jepa_ratio and --stp_positions are the variant's, --lbd and the other JEPA options
    apply to the JEPA variants, --stp_lbd to the STP variants (with train's default 0 they use
    the STP paper's GSM8K weight, `STP_LBD`, so that the term is costed).
    """

    model: str = _opt("tiny", "tiny | smollm2 | llama1b-random | a model directory")
    data: list[str] = _opt(
        ["generator"],
        "generator (default) | gsm8k [PATH] (default PATH ../shared/data/gsm8k/train.jsonl) | PATH (any file load_records reads)",
        metavar="SRC",
    )
    # Bench's own default: 32 examples per step (train's 8 times its accumulation steps); a bench
    # step is one micro-batch, so this is train's per-device micro-batch size.
    per_device_train_batch_size: int = _opt(32, "examples per optimizer step")
    n_batches: int = _opt(8, "fixed batches, cycled over the steps")
    steps: int = _opt(20, "timed optimizer steps per variant")
    warmup: int = _opt(5, "untimed steps first (compilation, optimizer state)")
    dtype: str = _opt(
        "auto",
        "bf16 = autocast with fp32 master weights (auto: bf16 on cuda, fp32 on cpu)",
        choices=("auto", "bf16", "fp32"),
    )
    device: str = _opt("auto", "auto | cuda | cpu | cuda:N")
    # Bench's auto differs from train's (flex only when λ > 0): every variant, SFT ones included,
    # runs with the same attention so that their times compare.
    attn_implementation: str = _opt(
        "auto",
        "attention implementation of every variant (auto: flex_attention on cuda, sdpa on cpu)",
        choices=("auto", "sdpa", "eager", "flex_attention"),
    )
    variants: list[str] = _opt(
        DEFAULT_VARIANTS,
        "variants to run, comma (or space) separated: hf_sft, sft, two_pass, sp_first, sp_all, each also with _packed",
    )
    # Bench's own default: 512 (train's 1024) keeps the timed batches of GSM8K-sized examples small.
    max_length: int = _opt(512, "token limit per example")
    pack_tokens: int = _opt(
        0,
        "row length of packed variants; 0 = auto (flex: the whole batch in one row; "
        "sdpa/eager: rows as long as the variant's padded rows)",
    )
    # Bench's own default: 1e-5 (train's 5e-5); the timed steps only need to move the weights.
    learning_rate: float = _opt(1e-5, "AdamW learning rate of the timed steps")
    seed: int = _opt(0, "seed of the data, initialisation and pair choices")
    mem_steps: int = _opt(2, "CPU: untimed steps that probe the peak RSS after the timed ones (0 = skip)")
    threads: int = _opt(0, "torch CPU threads (0 = default); 1 avoids OpenMP stalls on a shared, oversubscribed host")
    rounds: int = _opt(
        1,
        "run the variant list this many times and keep each variant's fastest round (use 3+ "
        "on a shared CPU; memory is the max over rounds); '×SFT by round' is the median of "
        "the per-round ratios, '×SFT range' their lowest and highest",
    )
    torch_compile: bool = _opt(
        False, "torch.compile the decoder (dynamic shapes) for every variant; give --warmup >= 2"
    )
    torch_compile_scope: str = _opt(
        "layers",
        "with --torch_compile: 'layers' compiles each decoder layer (one "
        "shared graph), 'decoder' the whole stack (as in train)",
        choices=("layers", "decoder"),
    )
    profile_dir: str | None = _opt(
        None, "after timing, profile a few more steps per variant; write DIR/profile_<variant>.txt", metavar="DIR"
    )
    profile_steps: int = _opt(3, "steps profiled per variant")

    def _checks(self) -> list[tuple[bool, str]]:
        """JEPAOptions' ranges, then bench's own."""
        return [
            *super()._checks(),
            (
                self.steps >= 1 and self.warmup >= 1 and self.rounds >= 1,
                "--steps, --warmup and --rounds must be >= 1 (warm-up allocates the optimizer state)",
            ),
            (
                min(self.per_device_train_batch_size, self.n_batches, self.max_length) >= 1,
                "--per_device_train_batch_size, --n_batches and --max_length must be >= 1",
            ),
            (not self.profile_dir or self.profile_steps >= 1, "--profile_steps must be >= 1 with --profile_dir"),
        ]

    def __post_init__(self) -> None:
        """`--variants sft,sp_first` (the documented form) and `--variants sft sp_first` alike."""
        items = [self.variants] if isinstance(self.variants, str) else self.variants
        self.variants = [v.strip() for item in items for v in item.split(",") if v.strip()]
        self.data = [self.data] if isinstance(self.data, str) else list(self.data)


@dataclass
class Row:
    variant: str
    ms_median: float
    ms_mean: float
    ms_min: float
    nonpad_tokens_per_s: float  # mean non-pad tokens of a timed step / median step time
    nonpad_tokens_per_step: float  # mean over the fixed batches
    layout_tokens_per_step: float  # B×T of every pass, padding and JEPA tokens included
    rows_per_step: float
    peak_mib: float | None  # cuda: max_memory_allocated (weights included); cpu: peak RSS of the process
    delta_peak_mib: float | None  # peak minus what was allocated/resident just before the variant
    time_x_sft: float | None = None
    time_x_hf: float | None = None
    # Median over rounds of (this variant's round median / the same-layout SFT's median in that
    # round). Both numbers of a pair come from the same pass over the variants, so slow drift of a
    # shared host cancels, which the fastest-round ratio (time_x_sft) cannot do. Equal to it with one round.
    time_x_sft_rounds: float | None = None
    # The lowest and highest of those per-round ratios (two rounds or more): the noise a ratio carries
    # on this host. Two variants whose ranges overlap are not ranked by this run.
    time_x_sft_range: tuple[float, float] | None = None
    round_ms: list[float] = field(default_factory=list)  # median ms/step of each round
    mem_x_sft: float | None = None
    delta_mem_x_sft: float | None = None
    compiled_graphs: int = 0
    loss_first: float | None = None
    loss_last: float | None = None
    model_tflops_per_s: float | None = None  # model FLOPs of a timed step (flops.py) / median step time
    mfu: float | None = None  # model_tflops_per_s / the matmul peak measured on the same device and dtype


class _CpuMemory:
    """Peak resident set size on Linux: /proc/self/clear_refs resets VmHWM, /proc/self/status reads it.

    glibc keeps freed heap memory and raises its mmap threshold dynamically, which would hide
    re-used memory from RSS. So memory is probed in separate, untimed steps after the timed ones,
    with the mmap threshold pinned low (128 KiB: tensors are mmap'd and given back on free); for
    the timed steps it is pinned high (32 MiB, glibc's own dynamic maximum) so that timing does not
    pay an mmap/munmap + page-fault per tensor. It measures the whole process, so read deltas.
    """

    def __init__(self) -> None:
        self.ok = sys.platform.startswith("linux") and os.path.exists("/proc/self/clear_refs")
        self._libc = None
        if self.ok:
            try:
                import ctypes

                self._libc = ctypes.CDLL("libc.so.6")
            except OSError:
                self._libc = None
        self.timing_mode()

    def _mallopt(self, threshold: int) -> None:
        if self._libc is not None:
            self._libc.mallopt(-3, threshold)  # M_MMAP_THRESHOLD (a fixed value: no dynamic growth)
            self._libc.mallopt(-1, 2 * threshold)  # M_TRIM_THRESHOLD

    def timing_mode(self) -> None:
        self._mallopt(32 * 2**20)

    @staticmethod
    def _status(key: str) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0  # kB → MiB
        raise KeyError(key)

    def reset(self) -> float:
        """Enter probing mode and return the RSS (MiB) the peak is measured from."""
        if not self.ok:
            return 0.0
        self._mallopt(128 * 1024)
        if self._libc is not None:
            self._libc.malloc_trim(0)
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.ok = False
            return 0.0
        return self._status("VmRSS")

    def peak(self) -> float | None:
        out = self._status("VmHWM") if self.ok else None
        self.timing_mode()
        return out


def _to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def _graphs() -> int:
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:  # noqa: BLE001
        return 0


def run_variant(
    variant: str,
    lm,
    step_loss: Callable[[dict], torch.Tensor],
    batches: list[dict],
    init_state: dict,
    cfg: BenchConfig,
    device: torch.device,
    dtype: str,
    cpu_mem: _CpuMemory,
) -> tuple[list[float], float | None, float | None, float, float]:
    """Times warmup+steps optimizer steps; returns (per-step seconds, peak MiB, delta MiB, first, last loss)."""
    lm.load_state_dict(init_state)
    lm.zero_grad(set_to_none=True)
    cuda = device.type == "cuda"
    opt_kw = {"fused": True} if cuda else {"foreach": True}
    opt = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=cfg.learning_rate, **opt_kw)
    dev_batches = [_to(b, device) for b in batches]
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()

    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)

    losses: list[torch.Tensor] = []
    n = cfg.warmup + cfg.steps
    events = [torch.cuda.Event(enable_timing=True) for _ in range(cfg.steps + 1)] if cuda else []
    cpu_times: list[float] = []
    t_prev = 0.0
    for i in range(n):
        if i == cfg.warmup:
            if cuda:
                torch.cuda.synchronize(device)
                events[0].record()
            t_prev = time.perf_counter()
        batch = dev_batches[i % len(dev_batches)]
        opt.zero_grad(set_to_none=True)
        with amp:
            loss = step_loss(batch)
        loss.backward()
        opt.step()
        if i == 0 or i == n - 1:
            losses.append(loss.detach())
        if i >= cfg.warmup:
            if cuda:
                events[i - cfg.warmup + 1].record()
            else:
                t = time.perf_counter()
                cpu_times.append(t - t_prev)
                t_prev = t
    if cuda:
        torch.cuda.synchronize(device)
        times = [events[j].elapsed_time(events[j + 1]) / 1e3 for j in range(cfg.steps)]
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        delta = peak - base / 2**20
    else:
        times = cpu_times
        base = cpu_mem.reset() if cfg.mem_steps > 0 else 0.0  # untimed probe; AdamW state already exists
        _untimed_steps(cfg.mem_steps, step_loss, opt, dev_batches, amp)
        peak = cpu_mem.peak() if cfg.mem_steps > 0 else None
        delta = (peak - base) if peak is not None else None
    first, last = (float(x) for x in (losses[0], losses[-1]))
    if cfg.profile_dir:
        write_profile(variant, step_loss, opt, dev_batches, amp, cfg, device)
    del opt, dev_batches
    lm.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.empty_cache()
    return times, peak, delta, first, last


def _untimed_steps(
    n: int, step_loss: Callable[[dict], torch.Tensor], opt: torch.optim.Optimizer, batches: list[dict], amp: Any
) -> None:
    """``n`` more optimizer steps over ``batches`` (memory probe, profiler): same work as a timed step."""
    for i in range(n):
        opt.zero_grad(set_to_none=True)
        with amp:
            loss = step_loss(batches[i % len(batches)])
        loss.backward()
        opt.step()
        del loss


def write_profile(
    variant: str,
    step_loss: Callable[[dict], torch.Tensor],
    opt: torch.optim.Optimizer,
    batches: list[dict],
    amp: Any,
    cfg: BenchConfig,
    device: torch.device,
) -> Path:
    """Run ``cfg.profile_steps`` more steps under torch.profiler; write the top ops by self time.

    Untimed and after the timed steps, so the profiler's overhead never touches the table's numbers.
    The op table says where a step's time goes (matmuls vs attention vs elementwise kernels vs
    launch gaps), which the step time alone cannot.
    """
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        _untimed_steps(cfg.profile_steps, step_loss, opt, batches, amp)
        if cuda:
            torch.cuda.synchronize(device)
    averages = prof.key_averages()
    key = "self_cpu_time_total"
    if cuda:
        key = "self_device_time_total" if hasattr(averages[0], "self_device_time_total") else "self_cuda_time_total"
    out = Path(cfg.profile_dir) / f"profile_{variant}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        f"{variant}: {cfg.profile_steps} steps, sorted by {key}\n" + averages.table(sort_by=key, row_limit=40) + "\n"
    )
    return out


MEMORY_NOTE_CUDA = (
    "peak = torch.cuda.max_memory_allocated over warm-up + timed steps (weights, grads, AdamW "
    "state, activations, batches); Δpeak = peak − memory allocated just before the variant "
    "(weights + its batches)."
)


MEMORY_NOTE_CPU = (
    "peak = the process's peak resident set (VmHWM via /proc/self/clear_refs) over untimed probe "
    "steps run after the timed ones; Δpeak = peak − RSS just before them, i.e. grads, activations and "
    "transients of one step (AdamW state is already resident). Whole-process RSS: read Δpeak."
)


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, device and start time of a bench run: the table's first line and its JSON's `env`."""
    env: dict[str, Any] = dict(versions())
    env["device"] = str(device)
    env["device_name"] = device_name(device)
    if device.type != "cuda":  # threads set CPU speed as much as the cores do
        env["device_name"] += f", {torch.get_num_threads()} torch threads"
    env["started_utc"] = utc_timestamp()
    return env
