"""Several training processes on one machine: the shipped accelerate presets, which one to use, and
the `accelerate launch` command that starts them.

Presets live in finetune/assets/accelerate/<name>.yaml (ddp, zero2, zero3, zero3-offload, fsdp).
`choose_preset()` follows the planner's memory estimate: plain DDP when a full copy fits on each
GPU (fastest), else the lightest preset that shards enough, and says why. `check_preset()` refuses
what cannot run here with a sentence that says what to do (DeepSpeed missing, no GPU, too few GPUs).
`launch_command()` is what runs.start_run() executes instead of `python -m finetune train` when a
run asks for more than one process: torchrun underneath, every rank runs the same train.py, and
only rank 0 writes the run folder.

Nothing heavy is imported here: the app builds the command without loading torch.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
from pathlib import Path

PRESET_DIR = Path(__file__).with_name("assets") / "accelerate"

# What each preset splits over the processes (names of the planner's memory parts), what it moves
# to CPU RAM, and whether it needs DeepSpeed: defined beside the planner, which divides exactly these parts.
from .plan.common import ACCELERATE_PRESETS as PRESETS  # noqa: E402 -- the planner sizes them too
# Lightest first: the first that fits is the fastest choice.
_ORDER = ("ddp", "zero2", "fsdp", "zero3", "zero3-offload")


class ParallelError(ValueError):
    """A multi-process setting that cannot run here, said so that the user knows what to change."""


def preset_path(name: str) -> Path:
    if name not in PRESETS:
        raise ParallelError(f"train.accelerate_preset: unknown preset {name!r}; one of {', '.join(PRESETS)}")
    return PRESET_DIR / f"{name}.yaml"


def deepspeed_installed() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def _devices(hw: dict) -> int:
    return int(hw.get("gpu_count") or 0) if hw.get("device") == "cuda" else 0


def check_preset(preset: str, num_processes: int, hw: dict) -> None:
    """Raise ParallelError when `preset` with `num_processes` cannot run on the machine `hw`."""
    info = PRESETS.get(preset)
    if info is None:
        raise ParallelError(f"train.accelerate_preset: unknown preset {preset!r}; one of {', '.join(PRESETS)}")
    gpus = _devices(hw)
    if gpus == 0 and preset != "ddp":
        raise ParallelError(f"train.accelerate_preset: {preset} ({info['label']}) needs CUDA GPUs; this machine has "
                            "none. On a CPU only ddp runs (gloo backend).")
    if info["deepspeed"] and not deepspeed_installed():
        raise ParallelError(f"train.accelerate_preset: {preset} ({info['label']}) needs DeepSpeed, which is not "
                            "installed here. Install it on the GPU machine (`pip install deepspeed`), or choose "
                            "fsdp (shards the same way, no extra package) or ddp.")
    if gpus and num_processes > gpus:
        raise ParallelError(f"train.num_processes: {num_processes} processes but this machine has {gpus} GPU"
                            f"{'s' if gpus != 1 else ''}: use at most {gpus} (one process per GPU).")
    if not gpus:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if num_processes > cores:
            raise ParallelError(f"train.num_processes: {num_processes} processes on a CPU with {cores} cores would "
                                f"only slow each other down: use at most {cores}.")


def _estimate(cfg, preset: str, n: int, hw: dict) -> float | None:
    """Per-device GB for the run's method with `preset` over n processes (the planner's model)."""
    from .plan import estimate_memory, model_spec

    try:
        spec = model_spec(cfg.model.model_id)
    except Exception:  # an unknown model offline: nothing to estimate from
        return None
    est = estimate_memory(spec, cfg.train.method, cfg.data.max_seq_len, cfg.train.batch_size, cfg.lora.r,
                          cfg.train.gradient_checkpointing, device=hw.get("device", "cpu"),
                          shards=n, preset=preset)
    return est["total_gb"]


def choose_preset(cfg, hw: dict | None = None) -> tuple[str | None, str]:
    """(preset or None for a single process, the reason in one sentence).

    An explicit preset in the config is kept (and checked); `auto` follows the planner: DDP when a
    full copy fits on each GPU, else the lightest preset whose sharded estimate fits."""
    n = cfg.train.num_processes
    if n <= 1:
        return None, "one process: no accelerate launch needed"
    if hw is None:
        from .hardware import detect_hardware

        hw = detect_hardware()
    wanted = cfg.train.accelerate_preset
    if wanted != "auto":
        check_preset(wanted, n, hw)
        return wanted, f"{PRESETS[wanted]['label']} as set in the run config ({PRESETS[wanted]['what']})"
    gpus = _devices(hw)
    if not gpus:
        check_preset("ddp", n, hw)
        return "ddp", (f"DDP over {n} CPU processes (gloo): the only preset that runs without a GPU; "
                       "each process holds a full copy of the model")
    from .hardware import usable_memory_gb

    cap = usable_memory_gb(hw)
    usable = [p for p in _ORDER if not PRESETS[p]["deepspeed"] or deepspeed_installed()]
    full = _estimate(cfg, "ddp", n, hw)
    if full is None:
        check_preset("ddp", n, hw)
        return "ddp", "DDP: the model's size is unknown here, so nothing is sharded (set a preset to shard)"
    for p in usable:
        gb = _estimate(cfg, p, n, hw)
        if gb is not None and gb <= cap:
            check_preset(p, n, hw)
            if p == "ddp":
                return p, (f"DDP: a full copy needs about {gb:.1f} GB per GPU and fits in {cap:.0f} GB, so plain "
                           f"data parallel over {n} GPUs is fastest")
            return p, (f"{PRESETS[p]['label']}: a full copy needs about {full:.1f} GB per GPU, more than "
                       f"{cap:.0f} GB; with {PRESETS[p]['what']} over {n} GPUs it needs about {gb:.1f} GB each")
    last = usable[-1]
    check_preset(last, n, hw)
    gb = _estimate(cfg, last, n, hw) or 0.0
    extra = "" if deepspeed_installed() else " (DeepSpeed is not installed: its offload preset could go further)"
    return last, (f"{PRESETS[last]['label']}: even sharded, about {gb:.1f} GB per GPU exceeds {cap:.0f} GB; expect "
                  f"out-of-memory{extra}. Use QLoRA, a shorter sequence or a smaller batch")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(run_dir: str | os.PathLike, cfg, *, resume: bool = False,
                   hw: dict | None = None) -> tuple[list[str], dict]:
    """The `accelerate launch` command for a multi-process run and a description
    {preset, num_processes, reason} for status.json."""
    if hw is None:
        from .hardware import detect_hardware

        hw = detect_hardware()
    preset, reason = choose_preset(cfg, hw)
    if preset is None:
        raise ParallelError("train.num_processes: 1 process needs no accelerate launch")
    n = cfg.train.num_processes
    mixed = "bf16" if hw.get("device") == "cuda" and hw.get("bf16") else "no"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(preset_path(preset)),
           "--num_processes", str(n), "--num_machines", "1", "--mixed_precision", mixed,
           "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()),
           "--module", "finetune", "train", "--run", str(run_dir)]
    if resume:
        cmd.append("--resume")
    return cmd, {"preset": preset, "num_processes": n, "reason": reason}


# ---------------------------------------------------------------------------------------------
# Inside a rank (train.py): who am I, and make sure I die with the launcher


def world_size() -> int:
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent (torchrun) dies.

    torchrun starts each rank in a session of its own, so killing the launcher's process group
    (Stop by force, `kill -9`) would leave the ranks training on their own; this ties them to it."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before prctl: go now
            os.kill(os.getpid(), signal.SIGKILL)
    except OSError:
        pass
