"""The bottom of the planner: method and task names, units, the PlanRequest, and number formats.

Every other module of finetune.plan imports from here and from modules below it only:
common -> specs -> estimate -> export -> recommend (plan()) -> calibrate. No import circles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from ..builtin import TINY_CHAT_ID
from ..config import METHODS as _CONFIG_METHODS
from ..config import Method
from ..hardware import tier_names

# The training methods are config.METHODS (one list for the config, CLI, UI and planner); the
# planner lists them in its own order, cheapest-to-explain first, for its tables.
METHODS = tuple(sorted(_CONFIG_METHODS, key=lambda m: (m != "full", _CONFIG_METHODS.index(m))))
PEFT_METHODS = tuple(m for m in METHODS if m != "full")
TASK_TYPES = ("chat", "instruction", "classification", "extraction", "summarisation", "code", "preference")
PRIORITIES = ("quality", "speed", "cost")

GB = 1e9
PREFIX_VIRTUAL_TOKENS = 20


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class PlanRequest:
    """What the user wants to fine-tune, on what, with what data. Help text feeds the UI labels."""

    model: str = _f(TINY_CHAT_ID, "Base model: a Hub id, a local folder with config.json, or builtin:tiny-chat.")
    method: Literal["auto", Method] = _f(
        "auto", "Training method; auto follows the decision tree.")
    task: str = _f("", "What the fine-tuned model should do, in your words.")
    task_type: Literal["chat", "instruction", "classification", "extraction", "summarisation", "code",
                       "preference"] = _f("instruction", "Kind of task; sets data format and metrics.")
    examples: int = _f(1000, "Number of training examples (or preference pairs) you have.")
    mean_tokens: int | None = _f(None, "Mean tokens per example; default half of seq_len.")
    has_labels: bool = _f(True, "Do you have target outputs for your inputs?")
    has_preferences: bool = _f(False, "Do you have preference pairs (chosen / rejected answers)?")
    prompting_sufficient: bool = _f(False, "Does a well-written prompt already do the task well enough?")
    hardware: str = _f("local", "Hardware tier name (e.g. t4-small, a100-large) or local for this machine.")
    seq_len: int = _f(512, "Maximum tokens per training example (max_length).")
    batch_size: int = _f(8, "Examples per device per step you would like; reduced if it does not fit.")
    batch_fixed: bool = _f(False, "Keep batch_size unless it does not fit (else small data gets a smaller batch "
                                  "and fewer epochs for the same updates).")
    epochs: float | None = _f(None, "Passes over the data; default from the preset and data size.")
    priority: Literal["quality", "speed", "cost"] = _f("quality", "What matters most.")
    budget_usd: float | None = _f(None, "Spending limit for training, in US dollars.")
    budget_h: float | None = _f(None, "Time limit for training, in hours.")
    lora_rank: int | None = _f(None, "LoRA rank r; default from the preset.")
    gradient_checkpointing: bool = _f(True, "Recompute activations in backward: less memory, ~+30% time.")
    params_b: float | None = _f(None, "Model size in billions of parameters, for models the planner does not know.")
    dataset: str = _f("", "Dataset for the generated config: a Hub id, a local file, or builtin:demo.")
    measured_tokens_per_s: float | None = _f(
        None, "Training tokens/s measured on this machine by a dry run (finetune.plan.calibrate.dry_run); "
        "replaces the assumed MFU in the local time estimate.")
    measured_overhead_s: float | None = _f(
        None, "Fixed seconds every run pays on this machine (imports, loading model and data), from a dry run.")
    grpo_generations: int = _f(4, "GRPO: answers sampled per prompt.")
    grpo_completion_len: int = _f(256, "GRPO: longest sampled answer in tokens.")
    grpo_beta: float = _f(0.0, "GRPO: KL coefficient (0 = no reference model).")

    def __post_init__(self):
        def need(cond: bool, name: str, msg: str):
            if not cond:
                raise ValueError(f"{name}: {msg} (got {getattr(self, name)!r})")

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        need(isinstance(self.model, str) and self.model.strip() != "", "model", "give a model id or path")
        self.model = self.model.strip()
        need(self.method in ("auto",) + METHODS, "method", f"must be one of auto, {', '.join(METHODS)}")
        need(isinstance(self.task, str), "task", "must be text")
        need(self.task_type in TASK_TYPES, "task_type", f"must be one of {', '.join(TASK_TYPES)}")
        need(is_int(self.examples) and self.examples >= 0, "examples", "must be a whole number >= 0")
        need(self.mean_tokens is None or (is_int(self.mean_tokens) and self.mean_tokens >= 1),
             "mean_tokens", "must be a whole number >= 1, or empty")
        for name in ("has_labels", "has_preferences", "prompting_sufficient", "gradient_checkpointing"):
            need(isinstance(getattr(self, name), bool), name, "must be true or false")
        need(isinstance(self.hardware, str) and self.hardware in tier_names(), "hardware",
             f"unknown tier; choose one of {', '.join(tier_names())}")
        need(is_int(self.seq_len) and 16 <= self.seq_len <= 1_048_576, "seq_len",
             "must be a whole number between 16 and 1048576")
        need(is_int(self.batch_size) and 1 <= self.batch_size <= 4096, "batch_size",
             "must be a whole number between 1 and 4096")
        need(self.epochs is None or (is_num(self.epochs) and 0 < self.epochs <= 100), "epochs",
             "must be a number in (0, 100], or empty")
        need(self.priority in PRIORITIES, "priority", f"must be one of {', '.join(PRIORITIES)}")
        need(self.budget_usd is None or (is_num(self.budget_usd) and self.budget_usd >= 0), "budget_usd",
             "must be a number >= 0, or empty")
        need(self.budget_h is None or (is_num(self.budget_h) and self.budget_h > 0), "budget_h",
             "must be a number > 0, or empty")
        need(self.lora_rank is None or (is_int(self.lora_rank) and 1 <= self.lora_rank <= 1024), "lora_rank",
             "must be a whole number between 1 and 1024, or empty")
        need(self.params_b is None or (is_num(self.params_b) and 0 < self.params_b <= 5000), "params_b",
             "must be a number of billions in (0, 5000], or empty")
        need(isinstance(self.dataset, str), "dataset", "must be text")
        tps = self.measured_tokens_per_s
        need(tps is None or (is_num(tps) and tps > 0),
             "measured_tokens_per_s", "must be a number > 0, or empty")
        need(self.measured_overhead_s is None or (is_num(self.measured_overhead_s) and self.measured_overhead_s >= 0),
             "measured_overhead_s", "must be a number >= 0, or empty")
        need(is_int(self.grpo_generations) and 2 <= self.grpo_generations <= 256, "grpo_generations",
             "must be a whole number between 2 and 256")
        need(is_int(self.grpo_completion_len) and 1 <= self.grpo_completion_len <= 32768, "grpo_completion_len",
             "must be a whole number of tokens between 1 and 32768")
        need(is_num(self.grpo_beta) and 0 <= self.grpo_beta <= 10, "grpo_beta", "must be a number in [0, 10]")


# ---------------------------------------------------------------------------------------------
# The plan


def _hours(h: float) -> str:
    """A duration for people: minutes under an hour, hours under two days, then days."""
    if h * 3600 < 90:
        return f"{h * 3600:.0f} s"
    if h < 1:
        return f"{h * 60:.1f} min" if h * 60 < 10 else f"{h * 60:.0f} min"
    return f"{h:.1f} h" if h < 48 else f"{h / 24:.1f} days"


def _bar(pct: int, width: int = 10) -> str:
    full = round(pct / 100 * width)
    return "█" * full + "░" * (width - full)


def _slug(text: str) -> str:
    from ..paths import slug

    return slug(text.split("/")[-1].replace("builtin:", ""), 80, "model").lower()


def fmt_seconds(seconds: float) -> str:
    return _hours(float(seconds or 0) / 3600)


# accelerate presets for several processes (finetune/parallel.py launches them): which memory parts each
# shards over the processes and which it offloads to CPU RAM. The planner's memory model reads them too.
ACCELERATE_PRESETS: dict[str, dict] = {
    "ddp": {"label": "DDP", "shards": (), "offload": (), "deepspeed": False,
            "what": "a full copy of weights, gradients and optimizer state on every device"},
    "zero2": {"label": "DeepSpeed ZeRO-2", "shards": ("trainable_and_grads", "optimizer"), "offload": (),
              "deepspeed": True, "what": "optimizer state and gradients sharded, weights replicated"},
    "zero3": {"label": "DeepSpeed ZeRO-3", "shards": ("weights", "trainable_and_grads", "optimizer"),
              "offload": (), "deepspeed": True, "what": "weights, gradients and optimizer state sharded"},
    "zero3-offload": {"label": "DeepSpeed ZeRO-3 + CPU offload",
                      "shards": ("weights", "trainable_and_grads", "optimizer"), "offload": ("weights", "optimizer"),
                      "deepspeed": True,
                      "what": "weights, gradients and optimizer state sharded; optimizer state and weights in CPU RAM"},
    "fsdp": {"label": "FSDP", "shards": ("weights", "trainable_and_grads", "optimizer"), "offload": (),
             "deepspeed": False, "what": "weights, gradients and optimizer state sharded (PyTorch FSDP2)"},
}
