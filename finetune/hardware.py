"""What this machine can train on, and the Hugging Face Space hardware tiers the planner compares.

`detect_hardware()` describes the local machine: CUDA GPUs (name, memory, count) when torch sees
them, else the CPU (cores, RAM from /proc/meminfo, the avx512_bf16 / AMX flags that decide whether
bf16 autocast pays off, and a rough peak FLOP/s). `list_tiers()` / `get_tier(name)` read
assets/hardware_tiers.json (prices and specs of the Space flavours); the tier "local" is the
detected machine, in the same shape, so the planner treats both alike.

torch is imported only when an NVIDIA driver is visible, so planning on a CPU box stays fast and
works without torch installed. Run `python -m finetune.hardware` to print what was found.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
from pathlib import Path

TIERS_FILE = Path(__file__).with_name("assets") / "hardware_tiers.json"

# Peak dense tensor-core TFLOP/s by GPU name fragment, for local cards not in the tier table.
# bf16 where the card has it (fp16 for pre-Ampere). Order matters: first match wins.
_GPU_PEAK_TFLOPS = [
    ("H200", 989), ("H100", 989), ("GH200", 989), ("B200", 2250), ("A100", 312), ("A800", 312),
    ("L40S", 362), ("L40", 181), ("L4", 121), ("A10G", 70), ("A10", 125), ("A6000", 155),
    ("A5000", 111), ("A4000", 77), ("RTX 6000 Ada", 364), ("4090", 165), ("4080", 97),
    ("3090", 71), ("3080", 60), ("T4", 65), ("V100", 125), ("P100", 19), ("5090", 210),
]


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _meminfo_gb() -> tuple[float, float]:
    """(total, available) RAM in GB from /proc/meminfo; falls back to sysconf."""
    text = _read("/proc/meminfo")
    vals = {}
    for key in ("MemTotal", "MemAvailable"):
        m = re.search(rf"^{key}:\s+(\d+)\s+kB", text, re.M)
        if m:
            vals[key] = int(m.group(1)) * 1024 / 1e9
    if "MemTotal" not in vals:
        try:
            vals["MemTotal"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
        except (ValueError, OSError, AttributeError):
            vals["MemTotal"] = 0.0
    return vals["MemTotal"], vals.get("MemAvailable", vals["MemTotal"])


def _cpu_info() -> dict:
    text = _read("/proc/cpuinfo")
    flags_m = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
    flags = set(flags_m.group(1).split()) if flags_m else set()
    name_m = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
    mhz = [float(x) for x in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", text, re.M)]
    try:
        cores = len(os.sched_getaffinity(0))  # respects container CPU pinning, unlike cpu_count
    except AttributeError:
        cores = os.cpu_count() or 1
    ghz = (max(mhz) / 1000) if mhz else 2.5
    # fp32 FLOPs per cycle per logical CPU: two FMA pipes x 16 (AVX-512) or 8 (AVX2) lanes x 2.
    # Cloud vCPUs behave close to this: a LoRA step of a SmolLM2-135M-shaped model reached ~30%
    # of it on 2 EPYC vCPUs (torch 2.13), so it is a usable ceiling for the planner's MFU.
    if "avx512f" in flags:
        per_cycle = 64
    elif "avx2" in flags and "fma" in flags:
        per_cycle = 32
    else:
        per_cycle = 16
    return {
        "cpu_name": name_m.group(1).strip() if name_m else "unknown CPU",
        "cpu_cores": cores,
        "cpu_ghz": round(ghz, 2),
        "avx512": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": "amx_bf16" in flags or "amx_tile" in flags,
        "peak_tflops": round(cores * ghz * 1e9 * per_cycle / 1e12, 3),
    }


def cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    try:
        vals = [int(x) for x in _read("/proc/stat").splitlines()[0].split()[1:]]
    except (IndexError, ValueError):
        return None
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    return sum(vals[:8]) - idle, sum(vals[:8])


def busy_cores_now(window_s: float = 0.1) -> float | None:
    """How many cores other processes keep busy right now: /proc/stat over a short window (this
    process sleeps meanwhile). Unlike the 1-minute load average it does not remember the seconds
    before, such as the CLI's own start-up. None where /proc/stat is missing."""
    import time

    a = cpu_times()
    if a is None:
        return None
    time.sleep(window_s)
    b = cpu_times()
    if b is None or b[1] <= a[1]:
        return None
    return (b[0] - a[0]) / (b[1] - a[1]) * (os.cpu_count() or 1)


def cpu_peak_tflops(vcpu: int, avx512: bool = True, ghz: float = 2.5) -> float:
    """The same rough fp32 estimate for a CPU tier we cannot inspect (a Space's vCPUs)."""
    return round(vcpu * ghz * 1e9 * (64 if avx512 else 32) / 1e12, 3)


def _nvidia_present() -> bool:
    # Cheap checks before paying for `import torch` (a second or more).
    return Path("/proc/driver/nvidia/gpus").is_dir() or Path("/dev/nvidiactl").exists()


def _gpu_peak(name: str) -> float | None:
    for frag, tflops in _GPU_PEAK_TFLOPS:
        if frag.lower() in name.lower():
            return float(tflops)
    return None


def _detect_cuda() -> dict | None:
    if not _nvidia_present():
        return None
    try:
        import torch
    except ImportError:
        return None
    try:
        if not torch.cuda.is_available():
            return None
        count = torch.cuda.device_count()
        props = torch.cuda.get_device_properties(0)
        major, _minor = torch.cuda.get_device_capability(0)
    except Exception:  # a broken driver must not break planning
        return None
    return {
        "gpu": props.name,
        "gpu_count": count,
        "gpu_memory_gb": round(props.total_memory / 1e9, 1),
        "peak_tflops": _gpu_peak(props.name),
        "bf16": major >= 8,  # Ampere and newer
    }


@functools.lru_cache(maxsize=1)
def _detect_cached() -> dict:
    total, avail = _meminfo_gb()
    info = _cpu_info()
    hw = {
        "name": "local",
        "label": "This machine",
        "device": "cpu",
        "gpu": None,
        "gpu_count": 0,
        "gpu_memory_gb": 0,
        "peak_tflops": info["peak_tflops"],
        "memory_bandwidth_gbs": None,
        "price_usd_per_h": 0.0,
        "vcpu": info["cpu_cores"],
        "ram_gb": round(total, 1),
        "ram_available_gb": round(avail, 1),
        "available": True,
        "cpu": info,
        "bf16": info["avx512_bf16"] or info["amx"],
    }
    cuda = _detect_cuda()
    if cuda:
        hw.update(cuda)
        hw["device"] = "cuda"
    return hw


def detect_hardware(refresh: bool = False) -> dict:
    """Describe this machine as a tier named "local" (see module docstring). Cached per process."""
    if refresh:
        _detect_cached.cache_clear()
    hw = copy.deepcopy(_detect_cached())
    try:  # fresh each time: a busy machine trains slower than any estimate made when it was idle
        hw["load_avg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        hw["load_avg_1m"] = None
    return hw


def describe(hw: dict | None = None) -> str:
    """One line, for people: what was detected on this machine."""
    hw = hw or detect_hardware()
    if hw.get("device") == "cuda":
        text = (f"CUDA: {hw.get('gpu_count', 1)} x {hw.get('gpu')} ({hw.get('gpu_memory_gb')} GB each, "
                f"{'bf16' if hw.get('bf16') else 'fp16 only'}, ~{hw.get('peak_tflops') or '?'} TFLOP/s)")
    else:
        cpu = hw.get("cpu") or {}
        feats = [f for f, on in (("AVX-512", cpu.get("avx512")), ("avx512_bf16", cpu.get("avx512_bf16")),
                                 ("AMX", cpu.get("amx"))) if on]
        bf16 = "bf16 runs natively" if hw.get("bf16") else "bf16 would be emulated (fp32 is used)"
        text = (f"CPU only: {cpu.get('cpu_name', 'unknown')}, {hw.get('vcpu')} cores, {hw.get('ram_gb')} GB RAM "
                f"({hw.get('ram_available_gb')} GB free), {', '.join(feats) or 'no AVX-512'}; {bf16}, "
                f"~{hw.get('peak_tflops')} TFLOP/s")
    load, cores = hw.get("load_avg_1m"), hw.get("vcpu") or 1
    if load is not None and hw.get("device") != "cuda" and load > 0.5 * cores:
        text += f". Busy when checked: load {load:g} on {cores} cores, so training may be slower than planned"
    return text


@functools.lru_cache(maxsize=1)
def _tiers_doc() -> dict:
    doc = json.loads(TIERS_FILE.read_text())
    for tier in doc["tiers"]:
        tier["device"] = "cuda" if tier["gpu_count"] else "cpu"
        # T4 (Turing) has no bf16: the planner switches to fp16 there.
        tier["bf16"] = bool(tier["gpu_count"]) and tier["gpu"] != "T4"
        if tier["peak_tflops"] is None:
            tier["peak_tflops"] = cpu_peak_tflops(tier["vcpu"])
    return doc


def tiers_meta() -> dict:
    """Where the prices come from and when they were taken."""
    doc = _tiers_doc()
    return {k: v for k, v in doc.items() if k != "tiers"}


def list_tiers(include_local: bool = False, include_unavailable: bool = True) -> list[dict]:
    """The Space hardware tiers (copies), cheapest first as listed; optionally "local" first."""
    tiers = [copy.deepcopy(t) for t in _tiers_doc()["tiers"]
             if include_unavailable or t.get("available", True)]
    if include_local:
        tiers.insert(0, detect_hardware())
    return tiers


def get_tier(name: str) -> dict:
    """One tier by name ("local" = this machine). Raises ValueError listing the known names."""
    if name == "local":
        return detect_hardware()
    for tier in _tiers_doc()["tiers"]:
        if tier["name"] == name:
            return copy.deepcopy(tier)
    names = ", ".join(["local"] + [t["name"] for t in _tiers_doc()["tiers"]])
    raise ValueError(f"hardware: unknown tier {name!r}; choose one of {names}")


def tier_names() -> list[str]:
    return ["local"] + [t["name"] for t in _tiers_doc()["tiers"]]


def usable_memory_gb(tier: dict) -> float:
    """Memory one training process can use per device: GPU memory, or RAM left for training.

    On a CPU the OS, Python and the app itself hold a few GB; on "local" we trust MemAvailable.
    """
    if tier.get("gpu_count"):
        return float(tier["gpu_memory_gb"])
    if "ram_available_gb" in tier:
        return max(0.0, float(tier["ram_available_gb"]) - 1.0)
    return max(0.0, float(tier["ram_gb"]) - 2.5)


if __name__ == "__main__":
    print(json.dumps(detect_hardware(), indent=2))
