"""Speed of the training child: threads chosen by timing real steps, phase timings, and MFU.

- `ThreadTuner` + `ThreadTuning` (mixed into the trainer class): on a CPU the first micro-steps of
  the run are timed at several thread counts (all cores, half, ..., one), interleaved, and the
  fastest per token is kept, measured again every RECHECK_STEPS micro-steps. A step of LONG_STEP_S or more on
  all cores while other processes leave them idle keeps all cores without slower trials. These are real training steps, so measuring
  costs no extra work; the best count depends on the model's matrix sizes (a tiny model can be
  faster on one thread) and on what else keeps the cores busy now. status.json gets `threads` and
  `threads_why` with the figures.
- `Phases`: wall time per phase of the child since its process started (status `phases_s`):
  process start and imports, setup, model load, data, trainer set-up, training, final evaluation,
  saving.
- `flops_per_token` and `peak_flops`: MFU = tokens/s x model FLOPs per token / the device's peak
  (a GPU's listed peak, or on a CPU this machine's matmul rate measured once and cached under the
  home folder), shown in the status (`mfu`) and the Train tab while a run goes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

WARMUP_STEPS = 1  # the first micro-step allocates buffers: not a fair sample
ROUNDS = 2  # samples per candidate; the fastest sample counts (interference only slows steps down)
RECHECK_STEPS = 300  # measure again after this many micro-steps: other work may have started or ended
# A step this long on all cores, with the other processes idle meanwhile, has matrices large enough to
# keep every core busy: a trial step on fewer threads would cost seconds and is skipped (SmolLM2-135M at
# 4 x 1024 tokens: 22 s on 2 threads, about 40 s on 1). Short steps (a tiny model, where one thread can
# win) are still compared by timing.
LONG_STEP_S = 2.0
OTHERS_IDLE_CORES = 0.25  # other processes' average use of the cores during that step


def process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc), so phases include start-up and imports."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


class Phases:
    """Accumulates wall seconds per named phase; `mark(name)` closes the phase that just ran."""

    def __init__(self):
        self.t = time.perf_counter()
        age = process_age_s()
        self.out: dict[str, float] = {"start_and_imports": round(age, 3)} if age is not None else {}

    def mark(self, name: str) -> dict:
        now = time.perf_counter()
        self.out[name] = round(self.out.get(name, 0.0) + now - self.t, 3)
        self.t = now
        return dict(self.out)


def thread_candidates(cores: int) -> list[int]:
    """All cores first, then halves down to one (at most four counts: each costs a few steps)."""
    out = [cores]
    for c in (cores // 2, cores // 4, 1):
        if 1 <= c < out[-1]:
            out.append(c)
    return out


def busy_cpu_s() -> float | None:
    """CPU seconds all processes of this machine have been busy since boot (/proc/stat), or None."""
    from .hardware import cpu_times

    t = cpu_times()
    return None if t is None else t[0] / os.sysconf("SC_CLK_TCK")


class OthersMeter:
    """How many cores other processes used between start() and cores(): the machine's busy time
    (/proc/stat) minus this process's own CPU time, over the wall time. None where unknown."""

    def start(self) -> None:
        self.t, self.busy, self.own = time.perf_counter(), busy_cpu_s(), time.process_time()

    def cores(self) -> float | None:
        busy, wall = busy_cpu_s(), time.perf_counter() - self.t
        if busy is None or self.busy is None or wall <= 0:
            return None
        return max(0.0, (busy - self.busy) - (time.process_time() - self.own)) / wall


def _tokens(inputs) -> int:
    n = 0
    for k, v in (inputs or {}).items():
        if k.endswith("input_ids") and hasattr(v, "numel"):
            n += int(v.numel())
    return max(n, 1)


class ThreadTuner:
    """Runs the schedule: a warm-up step on all cores, then every candidate ROUNDS times, interleaved;
    then keeps the count with the lowest seconds per token and calls on_decision(threads, why).
    Every RECHECK_STEPS micro-steps after a decision it measures again (without the warm-up)."""

    def __init__(self, cores: int, on_decision=None):
        import torch

        self.cores = cores
        self.candidates = thread_candidates(cores)
        self.on_decision = on_decision
        self.chosen: int | None = None if len(self.candidates) > 1 else cores
        self.since_decision = 0
        self._start([cores] * WARMUP_STEPS)
        torch.set_num_threads(cores)

    def _start(self, warmup: list[int]) -> None:
        self.schedule = warmup + self.candidates * ROUNDS
        self.samples: dict[int, list[float]] = {c: [] for c in self.candidates}
        self.i, self.skip = 0, len(warmup)

    @property
    def done(self) -> bool:
        return self.chosen is not None

    def tick(self) -> None:
        """A micro-step ran on the chosen count; after RECHECK_STEPS of them, measure again."""
        self.since_decision += 1
        if self.since_decision >= RECHECK_STEPS and len(self.candidates) > 1:
            self.chosen = None
            self._start([])

    def before_step(self) -> None:
        import torch

        torch.set_num_threads(self.schedule[self.i])

    def after_step(self, seconds: float, inputs, others_cores: float | None = None) -> None:
        n = self.schedule[self.i]
        if self.i >= self.skip:
            self.samples[n].append(seconds / _tokens(inputs))
        self.i += 1
        if (self.i > self.skip and n == self.cores and seconds >= LONG_STEP_S and others_cores is not None
                and others_cores < OTHERS_IDLE_CORES):
            self.decide(why=(f"{self.cores} of {self.cores} cores: a step takes {seconds:.1f} s on all of them "
                             f"(matrices large enough to keep every core busy) and other processes used "
                             f"{others_cores:.2f} cores meanwhile, so slower trial steps on fewer threads "
                             f"were skipped ({seconds / _tokens(inputs) * 1e6:.0f} µs/token at {self.cores})"))
        elif self.i >= len(self.schedule):
            self.decide()

    def decide(self, why: str | None = None) -> tuple[int, str]:
        import torch

        best = {c: min(s) for c, s in self.samples.items() if s}
        self.chosen = self.cores if why else min(best, key=best.get) if best else self.cores
        self.since_decision = 0
        torch.set_num_threads(self.chosen)
        figures = ", ".join(f"{best[c] * 1e6:.0f} µs/token at {c}" for c in sorted(best, reverse=True))
        why = why or (f"{self.chosen} of {self.cores} cores: the fastest in the last measured steps ({figures})"
                      if best else f"{self.cores} cores (too few steps to compare thread counts)")
        if self.on_decision:
            self.on_decision(self.chosen, why)
        return self.chosen, why


class ThreadTuning:
    """Trainer mixin: times each micro-step while `fts_tuner` is still measuring."""

    fts_tuner: ThreadTuner | None = None

    def training_step(self, model, inputs, *args, **kwargs):
        tuner = self.fts_tuner
        if tuner is None or tuner.done:
            loss = super().training_step(model, inputs, *args, **kwargs)
            if tuner is not None:
                tuner.tick()
            return loss
        tuner.before_step()
        meter = OthersMeter()
        meter.start()
        t = time.perf_counter()
        loss = super().training_step(model, inputs, *args, **kwargs)
        tuner.after_step(time.perf_counter() - t, inputs, meter.cores())
        return loss


# ---------------------------------------------------------------------------------------------
# MFU


def flops_per_token(model, mean_len: float) -> float:
    """Training FLOPs per token: 2 per weight forward, 2 more backward for the input gradients, and
    2 more for the weights that train (so 4N frozen + 6N trained), plus attention 12·L·d·T. The
    input embedding is a lookup, not a matmul: it is left out (its trained rows, if any, count)."""
    cfg = getattr(model, "config", None)
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    emb_ids = {id(p) for p in emb.parameters()} if emb is not None else set()
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    frozen = trained = 0
    for p in model.parameters():
        n = p.numel()
        if id(p) in emb_ids and not tied and not p.requires_grad:
            continue
        if p.requires_grad:
            trained += n
        else:
            frozen += n
    layers = getattr(cfg, "num_hidden_layers", 0) or 0
    hidden = getattr(cfg, "hidden_size", 0) or 0
    return 4.0 * frozen + 6.0 * trained + 12.0 * layers * hidden * float(mean_len)


PEAK_CACHE = "cpu_peak.json"


def measure_matmul_flops(dtype_name: str, seconds: float = 0.25, size: int = 1024) -> float:
    import torch

    dtype = getattr(torch, dtype_name)
    # A generator of its own: drawing from the global one in the middle of a run (the first MFU figure)
    # would change the run's later dropout masks, and two runs with one seed would differ.
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=g).to(dtype) for _ in range(2))
    a @ b
    n, t0 = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return 2 * size ** 3 * n / (time.perf_counter() - t0)


def peak_flops(hw: dict, dtype_name: str, threads: int, cache_dir: Path | None = None) -> float | None:
    """FLOP/s the MFU is measured against. A GPU: its listed peak. A CPU: a 1024² matmul's rate in
    this dtype with these threads, measured once per machine (0.25 s) and cached in cache_dir."""
    if hw.get("device") == "cuda":
        return float(hw["peak_tflops"]) * 1e12 if hw.get("peak_tflops") else None
    key = f"{(hw.get('cpu') or {}).get('cpu_name')}|{threads}|{dtype_name}"
    path = (cache_dir / PEAK_CACHE) if cache_dir else None
    cache = {}
    if path is not None:
        try:
            cache = json.loads(path.read_text())
        except (OSError, ValueError):
            cache = {}
    if key in cache:
        return float(cache[key])
    rate = measure_matmul_flops(dtype_name)
    if path is not None:
        try:
            from .paths import atomic_write_json

            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, {**cache, key: rate})
        except OSError:
            pass
    return rate


def start_threads(device: str, report) -> ThreadTuner | None:
    """Threads for the training process; report(threads, why) records them. On a CPU with the machine
    to itself, a ThreadTuner decides during the first steps (and reports again); otherwise the count
    is set now."""
    import torch

    from .modeling import process_cores

    n, local = process_cores()
    if device == "cuda" or local > 1 or n == 1:
        torch.set_num_threads(n)
        why = ("the GPU does the heavy work" if device == "cuda" else
               f"this machine's cores shared by {local} processes" if local > 1 else "the only core")
        report(n, f"{n} cores: {why}")
        return None
    tuner = ThreadTuner(n, on_decision=report)
    report(n, f"measuring {', '.join(map(str, tuner.candidates))} threads on the first training steps")
    return tuner


def mfu_function(model, mean_len: float, hw: dict, precision: str, cores: int, cache_dir: Path | None):
    """tokens/s -> MFU (a fraction) against the peak of all `cores` (those this process may use), so
    a run that trains on fewer threads than it could shows it."""
    fpt = flops_per_token(model, mean_len)
    dtype = {"bf16": "bfloat16", "fp16": "float16"}.get(precision, "float32")
    peak: list[float | None] = []

    def mfu(tokens_per_s: float) -> float | None:
        if not peak:
            import torch

            threads = torch.get_num_threads()
            torch.set_num_threads(cores)
            try:
                peak.append(peak_flops(hw, dtype, cores, cache_dir))
            finally:
                torch.set_num_threads(threads)
        return round(tokens_per_s * fpt / peak[0], 4) if peak[0] else None

    return mfu


def import_training_stack(method: str, backend: str, skip_unused: bool = False) -> None:
    """Import the training libraries now, so that the phases show what imports cost. skip_unused (a
    process of its own for one run): a run that does not quantize never loads bitsandbytes, which
    peft imports whenever it is installed (about 1 s on a CPU); with the module marked absent, peft
    and transformers report it unavailable for the rest of the process. Unsloth must come before
    transformers/peft: its runs import in build_model instead."""
    import sys

    if backend == "unsloth":
        return
    if skip_unused and method != "qlora" and "bitsandbytes" not in sys.modules:
        sys.modules["bitsandbytes"] = None  # type: ignore[assignment]
    from .modeling import lean_transformers

    lean_transformers()
    import peft  # noqa: F401
    import transformers  # noqa: F401

    from .config import trainer_class

    trainer_class(method)  # the TRL trainer module and everything it pulls in (datasets, accelerate)
