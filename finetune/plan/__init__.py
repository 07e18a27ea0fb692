"""The fine-tuning planner: method, memory, time, cost and a ready-to-run TRL config, before training.

`plan(PlanRequest(...))` walks the fine-tuning decision tree (prompting -> data -> hardware, from
the fine-tuning-specialist seed), estimates memory for every method on the chosen hardware, time and
cost on every Hugging Face Space tier, picks hyperparameters from the conservative / balanced /
aggressive presets, lists risks with mitigations, and renders the "FINE-TUNING PLAN" report, a YAML
for `trl sft --config` / `trl dpo --config`, and an equivalent Python script.

Modules, bottom up (each imports only from the ones before it, so there are no import circles):
    common.py     method/task names, units, PlanRequest, duration formats
    specs.py      model registry (assets/models.json), built-in model, Hub/local config.json shapes
    estimate.py   memory, FLOPs, time and serving cost: the physics (DESIGN.md section 4)
    export.py     TRL config and YAML, Python script, Markdown report, plan files
    recommend.py  method choice, hyperparameters, risks, requirements, evaluation plan, readiness; plan()
    calibrate.py  dry runs on this machine and predicted-vs-actual checks (imported on demand: it
                  reaches into runs/ and train)

Pure and fast: no gradio, no torch, no network unless a Hub model's config is read; the registry and
tier table are read once. Try it: `python -m finetune plan --model meta-llama/Llama-3.1-8B-Instruct
--hardware t4-small`.
"""

from .common import GB, METHODS, PEFT_METHODS, PREFIX_VIRTUAL_TOKENS, PRIORITIES, TASK_TYPES, PlanRequest, fmt_seconds
from .estimate import (
                     CPU_OVERHEAD_GB,
                     CUDA_OVERHEAD_GB,
                     GPU_LAYER_OVERHEAD_S,
                     GPU_MFU,
                     GPU_STEP_OVERHEAD_S,
                     NF4_BYTES,
                     UNSLOTH_MINIMUM,
                     calibrated_time,
                     planned_backend,
                     estimate_memory,
                     estimate_run_memory,
                     estimate_time,
                     flops_per_token,
                     inference_cost_per_1m,
                     trainable_params,
)
from .export import write_plan_files
from .recommend import FULL_FT_MIN_EXAMPLES, METHOD_LR, PRESETS, PRIORITY_PRESET, SFT_MIN_EXAMPLES, plan
from .specs import LLAMA_LIKE, MODELS_FILE, TARGET_MODULES, model_spec, registry_models

__all__ = [
    "GB", "METHODS", "PEFT_METHODS", "PREFIX_VIRTUAL_TOKENS", "PRIORITIES", "TASK_TYPES", "PlanRequest",
    "fmt_seconds", "LLAMA_LIKE", "MODELS_FILE", "TARGET_MODULES", "model_spec", "registry_models",
    "CPU_OVERHEAD_GB", "CUDA_OVERHEAD_GB", "GPU_LAYER_OVERHEAD_S", "GPU_MFU", "GPU_STEP_OVERHEAD_S", "NF4_BYTES",
    "UNSLOTH_MINIMUM", "calibrated_time", "planned_backend", "estimate_memory", "estimate_run_memory", "estimate_time",
    "flops_per_token", "inference_cost_per_1m", "trainable_params",
    "write_plan_files", "FULL_FT_MIN_EXAMPLES", "METHOD_LR", "PRESETS", "PRIORITY_PRESET",
    "SFT_MIN_EXAMPLES", "plan",
]
