"""The run configuration: one dataclass per concern, composed into `RunConfig`.

Choices are Literals, units are in the names, help text lives once in `field(metadata={"help":..})`
(the UI reads labels and info from it), validation is in `__post_init__` and names the field.
The translation to TRL's `SFTConfig`/`DPOConfig` and PEFT's configs happens only here.
No secrets ever enter a config: tokens travel in the environment.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from .builtin import DEMO_DATASET_ID, TINY_CHAT_ID

Method = Literal["lora", "rslora", "dora", "qlora", "full", "prefix", "cpt", "dpo", "orpo", "kto", "grpo"]
METHODS: tuple[str, ...] = get_args(Method)
# Accelerate presets shipped under finetune/assets/accelerate/ (see finetune/parallel.py).
AcceleratePreset = Literal["auto", "ddp", "zero2", "zero3", "zero3-offload", "fsdp"]
ACCELERATE_PRESETS: tuple[str, ...] = get_args(AcceleratePreset)
# What each method does, for people (the UI shows it next to the choice; the CLI's --method help lists it).
METHOD_HELP: dict[str, str] = {
    "lora": "LoRA: small low-rank adapters on the frozen base (the default).",
    "rslora": "rsLoRA: LoRA scaled by alpha/sqrt(r), which keeps high ranks stable.",
    "dora": "DoRA: LoRA plus a trained magnitude per output; a little better, ~1.3x slower.",
    "qlora": "QLoRA: LoRA on a 4-bit NF4 base (bitsandbytes); least memory, on a GPU or a CPU.",
    "full": "Full fine-tuning: every weight trains (fp32 master weights); most memory.",
    "prefix": "Prefix tuning: trained virtual tokens in front of every layer's attention.",
    "cpt": "Continued pretraining: LoRA on plain text, every token trained (a .txt file or a text column).",
    "dpo": "DPO: preference pairs (prompt, chosen, rejected); on the base or on a finished SFT run's adapter.",
    "orpo": "ORPO: preference pairs, SFT and preference in one loss, no reference model.",
    "kto": "KTO: single answers labelled good or bad (prompt, completion, label).",
    "grpo": "GRPO: reinforcement learning on prompts (with reference answers) scored by verifiable rewards.",
}
SFT_METHODS = ("lora", "rslora", "dora", "qlora", "full", "prefix", "cpt")
PREFERENCE_METHODS = ("dpo", "orpo", "kto")
LORA_METHODS = ("lora", "rslora", "dora", "qlora", "cpt", "dpo", "orpo", "kto", "grpo")  # methods that train LoRA adapters


class ConfigError(ValueError):
    """A bad value, with the field it belongs to."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


def _help(text: str, **kw) -> Any:
    return field(metadata={"help": text}, **kw)


def _check_range(name: str, value, lo=None, hi=None, *, integer=False):
    if integer and (not isinstance(value, int) or isinstance(value, bool)):
        raise ConfigError(name, f"must be a whole number, got {value!r}")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(name, f"must be a number, got {value!r}")
    if value != value:  # NaN
        raise ConfigError(name, "must be a number, got NaN")
    if lo is not None and value < lo:
        raise ConfigError(name, f"must be at least {lo}, got {value}")
    if hi is not None and value > hi:
        raise ConfigError(name, f"must be at most {hi}, got {value}")


@dataclass
class ModelConfig:
    model_id: str = _help("Base model: builtin:tiny-chat, a Hub id (org/name) or a local folder.",
                          default=TINY_CHAT_ID)
    trust_remote_code: bool = _help("Run the model repository's own code (only for repos you trust).",
                                    default=False)

    def __post_init__(self):
        if not isinstance(self.model_id, str) or not self.model_id.strip():
            raise ConfigError("model.model_id", "is empty: choose builtin:tiny-chat, a Hub id or a local folder")
        self.model_id = self.model_id.strip()


@dataclass
class DataConfig:
    source: str = _help("Dataset: builtin:demo, a prepared dataset folder, or a file (JSONL, JSON, CSV, Parquet).",
                        default=DEMO_DATASET_ID)
    val_ratio: float = _help("Share of rows held out for validation when the source is not split yet.",
                             default=0.1)
    seed: int = _help("Seed for the train/validation split.", default=42)
    max_seq_len: int = _help("Longest sequence in tokens; longer rows are truncated (the start is kept).",
                             default=256)

    def __post_init__(self):
        if not isinstance(self.source, str) or not self.source.strip():
            raise ConfigError("data.source", "is empty: choose builtin:demo or a dataset file")
        _check_range("data.val_ratio", self.val_ratio, 0.0, 0.5)
        _check_range("data.seed", self.seed, 0, integer=True)
        _check_range("data.max_seq_len", self.max_seq_len, 16, 131072, integer=True)


@dataclass
class LoraConfig:
    r: int = _help("LoRA rank: the size of the low-rank update. Higher learns more, costs more memory.",
                   default=16)
    alpha: int = _help("LoRA alpha: scales the update (alpha / r). Commonly 2 x rank.", default=32)
    dropout: float = _help("Dropout on the LoRA input. 0 by default: its random masks cost 15-25% of a CPU step "
                           "(SmolLM2-135M, measured), and the validation loss's early stop and best-step "
                           "choice guard against overfitting; 0.05-0.1 is a regulariser for tiny datasets.",
                           default=0.0)
    target_modules: str = _help("Which linear layers get adapters: 'all-linear' or a comma list such as q_proj,v_proj.",
                                default="all-linear")
    num_virtual_tokens: int = _help("Prefix tuning only: number of trained virtual tokens.", default=16)

    def __post_init__(self):
        _check_range("lora.r", self.r, 1, 1024, integer=True)
        _check_range("lora.alpha", self.alpha, 1, 4096, integer=True)
        _check_range("lora.dropout", self.dropout, 0.0, 0.9)
        _check_range("lora.num_virtual_tokens", self.num_virtual_tokens, 1, 512, integer=True)
        if not self.target_modules.strip():
            raise ConfigError("lora.target_modules", "is empty: use 'all-linear' or name the layers")

    def modules(self) -> str | list[str]:
        t = self.target_modules.strip()
        return t if t == "all-linear" else [m.strip() for m in t.split(",") if m.strip()]


@dataclass
class TrainConfig:
    method: Method = _help("Training method: " + " ".join(METHOD_HELP.values()), default="lora")
    learning_rate: float = _help("Peak learning rate. LoRA tolerates ~1e-4 to 1e-3; full fine-tuning wants ~1e-5.",
                                 default=2e-4)
    epochs: float = _help("Passes over the training data.", default=3.0)
    max_steps: int = _help("Stop after this many optimiser steps (0 = use epochs).", default=0)
    # 8 (TRL's default), not 4: a CPU step of short rows costs about what half as many do (per-op
    # overhead), so batch 4 made an epoch of the demo rows on SmolLM2-135M 1.6x slower.
    batch_size: int = _help("Examples per device per step. Where it does not fit in memory, the run uses a smaller "
                            "batch with more accumulation (the same effective batch).", default=8)
    grad_accum: int = _help("Steps whose gradients are summed before an update (effective batch = batch x this).",
                            default=1)
    warmup_ratio: float = _help("Share of steps with a rising learning rate at the start (whole steps, rounded "
                                "down: a short run has none; the first warmup step already learns).", default=0.03)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = _help(
        "How the learning rate decays after warmup.", default="linear")  # linear, not cosine: on the demo (3 epochs
    # at 2e-3) cosine's longer high-rate middle left the answer loss 9% above TRL's over 3 seeds, linear 1.3% over 7
    weight_decay: float = _help("AdamW weight decay.", default=0.0)
    logging_steps: int = _help("Log loss every this many steps.", default=5)
    eval_steps: int = _help("Compute validation loss every this many steps (0 = at the end only).", default=50)
    save_steps: int = _help("Save a resumable checkpoint every this many steps.", default=50)
    save_total_limit: int = _help("Keep at most this many checkpoints.", default=2)
    gradient_checkpointing: bool = _help("Recompute activations in backward: less memory, ~+30-50% time.",
                                         default=False)
    seed: int = _help("Training seed: the adapter's initial weights and the order of the batches.", default=42)
    dpo_beta: float = _help("DPO, ORPO and KTO: beta. DPO/KTO: how far the model may move from the reference "
                            "(higher = closer); ORPO: weight of the preference term.", default=0.1)
    init_from_run: str = _help("DPO, ORPO, KTO or GRPO: the id of a finished LoRA run whose adapter this run continues "
                               "(its copy is the reference); empty = start from the base model.", default="")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = _help(
        "Numeric precision. auto: bf16 autocast where the hardware has it (GPUs from Ampere, CPUs with AMX or "
        "avx512_bf16), fp16 autocast with a loss scaler on older GPUs, else fp32. Master weights stay fp32 for "
        "full fine-tuning.", default="auto")
    backend: Literal["auto", "transformers"] = _help(
        "auto: Unsloth's FastLanguageModel on a CUDA GPU when unsloth is installed (LoRA, rsLoRA, QLoRA, "
        "continued pretraining), else transformers + PEFT. transformers: never Unsloth.", default="auto")
    group_by_length: bool = _help("Batch rows of similar length together so little compute goes to padding "
                                  "(on by default; rows are still shuffled in groups).", default=True)
    report_to: Literal["none", "tensorboard", "trackio"] = _help(
        "Experiment tracking: none, tensorboard (logs under the run's tb/ folder) or trackio (local-first: "
        "records under the run's trackio/ folder, `trackio show --project fine-tune-studio` from there; synced to "
        "a Space only when TRACKIO_SPACE_ID is set).",
        default="none")
    num_processes: int = _help("Training processes on this machine (one per GPU). More than 1 runs data-parallel "
                               "through `accelerate launch`; batch size stays per process.", default=1)
    accelerate_preset: AcceleratePreset = _help(
        "How several processes share the work: ddp (a full copy per GPU), zero2 (DeepSpeed: shards optimizer "
        "state and gradients), zero3 (DeepSpeed: also shards weights), zero3-offload (ZeRO-3 with optimizer "
        "state and weights in CPU RAM), fsdp (PyTorch FSDP2: shards weights, gradients, optimizer state), or "
        "auto (chosen from the planner's memory estimate).", default="auto")
    keep_best: bool = _help("Keep the adapter from the evaluation with the lowest validation loss instead of the "
                            "last step's (needs a validation split; the status says which step was kept).",
                            default=True)
    early_stopping_patience: int = _help("Stop when validation loss has not improved for this many evaluations "
                                         "in a row (0 = never stop early).", default=0)
    early_stopping_threshold: float = _help("An evaluation counts as an improvement only when it lowers the best "
                                            "validation loss by more than this.", default=0.0)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError("train.method", f"must be one of {', '.join(METHODS)}, got {self.method!r}")
        _check_range("train.learning_rate", self.learning_rate, 1e-8, 1.0)
        _check_range("train.epochs", self.epochs, 0.0, 1000)
        _check_range("train.max_steps", self.max_steps, 0, 10_000_000, integer=True)
        if self.epochs == 0 and self.max_steps == 0:
            raise ConfigError("train.epochs", "epochs and max_steps are both 0: nothing would be trained")
        _check_range("train.batch_size", self.batch_size, 1, 4096, integer=True)
        _check_range("train.grad_accum", self.grad_accum, 1, 4096, integer=True)
        _check_range("train.warmup_ratio", self.warmup_ratio, 0.0, 0.5)
        _check_range("train.weight_decay", self.weight_decay, 0.0, 1.0)
        _check_range("train.logging_steps", self.logging_steps, 1, 100000, integer=True)
        _check_range("train.eval_steps", self.eval_steps, 0, 10_000_000, integer=True)
        _check_range("train.save_steps", self.save_steps, 1, 10_000_000, integer=True)
        _check_range("train.save_total_limit", self.save_total_limit, 1, 1000, integer=True)
        _check_range("train.seed", self.seed, 0, integer=True)
        _check_range("train.dpo_beta", self.dpo_beta, 1e-4, 10.0)
        for name, choices in (("precision", ("auto", "fp32", "bf16", "fp16")), ("backend", ("auto", "transformers")),
                              ("report_to", ("none", "tensorboard", "trackio"))):
            if getattr(self, name) not in choices:
                raise ConfigError(f"train.{name}", f"must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        if not isinstance(self.init_from_run, str):
            raise ConfigError("train.init_from_run", "must be a run id")
        self.init_from_run = self.init_from_run.strip()
        if self.init_from_run and self.method not in PREFERENCE_METHODS + ("grpo",):
            raise ConfigError("train.init_from_run", f"only DPO, ORPO, KTO and GRPO continue a finished run's adapter, "
                                                     f"not {self.method}")
        _check_range("train.num_processes", self.num_processes, 1, 64, integer=True)
        if self.accelerate_preset not in ACCELERATE_PRESETS:
            raise ConfigError("train.accelerate_preset",
                              f"must be one of {', '.join(ACCELERATE_PRESETS)}, got {self.accelerate_preset!r}")
        _check_range("train.early_stopping_patience", self.early_stopping_patience, 0, 10_000, integer=True)
        _check_range("train.early_stopping_threshold", self.early_stopping_threshold, 0.0, 100.0)
        if not isinstance(self.keep_best, bool):
            raise ConfigError("train.keep_best", f"must be true or false, got {self.keep_best!r}")


@dataclass
class GrpoConfig:
    """GRPO only (method grpo): which rewards score the sampled answers, and how many are sampled."""

    reward: str = _help("Reward functions, comma-separated: exact, numeric (both against the reference answer), "
                        "format (regex), json (valid JSON, optionally against a schema), length (bounds).",
                        default="exact")
    reward_weights: str = _help("Weights of the reward functions, comma-separated in the same order (reward-file "
                                "functions last); empty = all 1.", default="")
    format_regex: str = _help("format reward: the regular expression a good answer contains.",
                              default=r"<answer>[\s\S]*?</answer>")
    json_schema: str = _help("json reward: a JSON schema the answer must fit (type, required, properties, enum, "
                             "items); empty = any valid JSON.", default="")
    length_min_chars: int = _help("length reward: fewest characters for full reward.", default=0)
    length_max_chars: int = _help("length reward: most characters for full reward (0 = no upper bound).",
                                  default=200)
    reward_file: str = _help("A Python file whose functions named reward* score answers too (local/private app "
                             "only: refused on a public Space).", default="")
    num_generations: int = _help("Answers sampled per prompt; rewards are compared within each group. The batch "
                                 "(batch x accumulation) counts answers, so it must be a multiple of this.",
                                 default=4)
    max_completion_len: int = _help("Longest sampled answer in tokens.", default=64)
    temperature: float = _help("Sampling temperature of the answers (higher = more varied groups).", default=1.0)
    beta: float = _help("KL coefficient against the starting model (0 = none: no reference model, less memory "
                        "and time).", default=0.0)

    def __post_init__(self):
        from .rewards import RewardError, compile_regex, parse_reward_names, parse_schema, parse_weights

        for name in ("reward", "reward_weights", "format_regex", "json_schema", "reward_file"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"grpo.{name}", f"must be text, got {getattr(self, name)!r}")
        self.reward_file = self.reward_file.strip()
        try:
            names = parse_reward_names(self.reward)
            self.reward = ",".join(names)
            if not names and not self.reward_file:
                raise ConfigError("grpo.reward", "no reward: pick at least one of exact, numeric, format, json, "
                                                 "length (or a reward file)")
            parse_weights(self.reward_weights, 0 if self.reward_file else len(names))
            if "format" in names:
                compile_regex(self.format_regex)
            parse_schema(self.json_schema)
        except RewardError as exc:
            raise ConfigError(exc.field, str(exc).split(": ", 1)[1]) from None
        _check_range("grpo.length_min_chars", self.length_min_chars, 0, 100_000, integer=True)
        _check_range("grpo.length_max_chars", self.length_max_chars, 0, 100_000, integer=True)
        if self.length_max_chars and self.length_max_chars < self.length_min_chars:
            raise ConfigError("grpo.length_max_chars", "is below length_min_chars")
        _check_range("grpo.num_generations", self.num_generations, 2, 256, integer=True)
        _check_range("grpo.max_completion_len", self.max_completion_len, 1, 32768, integer=True)
        _check_range("grpo.temperature", self.temperature, 0.01, 10.0)
        _check_range("grpo.beta", self.beta, 0.0, 10.0)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    grpo: GrpoConfig = field(default_factory=GrpoConfig)
    name: str = ""
    owner: str = ""  # who started it (HF username on a Space); empty locally

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(sorted(unknown)[0], "is not a config section")

        def build(sub_cls, key):
            sub = d.get(key) or {}
            if not isinstance(sub, dict):
                raise ConfigError(key, "must be an object")
            names = {f.name for f in dataclasses.fields(sub_cls)}
            bad = set(sub) - names
            if bad:
                raise ConfigError(f"{key}.{sorted(bad)[0]}", "is not a known setting")
            return sub_cls(**sub)

        return cls(model=build(ModelConfig, "model"), data=build(DataConfig, "data"),
                   lora=build(LoraConfig, "lora"), train=build(TrainConfig, "train"),
                   grpo=build(GrpoConfig, "grpo"), name=str(d.get("name") or ""), owner=str(d.get("owner") or ""))


# The balanced preset suits real pretrained models. The built-in demo model is random and tiny: it
# needs a higher learning rate and many passes over the small demo set to learn it in ~1 minute.
BUILTIN_DEMO_TRAIN = {"learning_rate": 2e-3, "epochs": 20.0, "batch_size": 8, "eval_steps": 100,
                      "save_steps": 200, "logging_steps": 5}
BUILTIN_DEMO_REASON = ("builtin:tiny-chat is randomly initialised: a 10x higher learning rate (2e-3) and "
                       "20 epochs let LoRA learn the demo set in about a minute on a CPU")


def default_run_config(model_id: str = TINY_CHAT_ID, source: str = DEMO_DATASET_ID, **train_overrides) -> RunConfig:
    """A RunConfig with defaults chosen for the model (the demo model gets its own)."""
    train = dict(BUILTIN_DEMO_TRAIN) if model_id == TINY_CHAT_ID else {}
    train.update({k: v for k, v in train_overrides.items() if v is not None})
    return RunConfig(model=ModelConfig(model_id=model_id), data=DataConfig(source=source), train=TrainConfig(**train))


def build_run_config(model_id: str = TINY_CHAT_ID, source: str = DEMO_DATASET_ID,
                     overrides: dict[str, dict[str, Any]] | None = None) -> RunConfig:
    """default_run_config() with settings changed per section ({"train": {"save_steps": 20}, "lora":
    {"r": 8}}), built through RunConfig.from_dict so every section's constructor validates it: a
    config is never mutated after it was checked."""
    d = default_run_config(model_id, source).to_dict()
    for section, values in (overrides or {}).items():
        if not isinstance(d.get(section), dict):
            raise ConfigError(section, "is not a config section")
        d[section].update(values)
    return RunConfig.from_dict(d)


def help_for(section_cls, name: str) -> str:
    for f in dataclasses.fields(section_cls):
        if f.name == name:
            return f.metadata.get("help", "")
    raise KeyError(name)


# ---------------------------------------------------------------------------------------------
# Translation to the libraries (the only place that knows their argument names)


def to_peft_config(cfg: RunConfig):
    import peft

    m = cfg.train.method
    if m == "full":
        return None
    if m == "prefix":
        return peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=cfg.lora.num_virtual_tokens)
    return peft.LoraConfig(
        task_type="CAUSAL_LM", r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.modules(), use_dora=(m == "dora"), use_rslora=(m == "rslora"),
    )


UNSLOTH_METHODS = ("lora", "rslora", "qlora", "cpt")
_ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def to_unsloth_peft_kwargs(cfg: RunConfig) -> dict:
    """Arguments for `FastLanguageModel.get_peft_model`. Dropout 0 and no bias keep Unsloth's fused
    LoRA kernels on (any other value falls back to its slow path); its own offloaded gradient
    checkpointing is used when checkpointing is on."""
    mods = cfg.lora.modules()
    return dict(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=0.0, bias="none",
                target_modules=_ALL_LINEAR if mods == "all-linear" else mods,
                use_rslora=cfg.train.method == "rslora",
                use_gradient_checkpointing="unsloth" if cfg.train.gradient_checkpointing else False,
                random_state=cfg.train.seed, max_seq_length=cfg.data.max_seq_len)


def choose_backend(cfg: RunConfig, hw: dict, unsloth_installed: bool) -> tuple[str, str]:
    """(backend, why): "unsloth" or "transformers", and a sentence for the status and the UI."""
    m = cfg.train.method
    if hw.get("device") != "cuda":
        return "transformers", "transformers + PEFT on the CPU (no CUDA GPU, which Unsloth needs)"
    if cfg.train.backend == "transformers":
        return "transformers", "transformers + PEFT on the GPU (backend=transformers was chosen)"
    if not unsloth_installed:
        return "transformers", "transformers + PEFT on the GPU (unsloth is not installed)"
    if m not in UNSLOTH_METHODS:
        return "transformers", f"transformers + PEFT on the GPU (this studio runs {m} through Unsloth only for " \
                               f"{', '.join(UNSLOTH_METHODS)})"
    return "unsloth", ("Unsloth FastLanguageModel on the GPU: fused LoRA kernels and chunked cross-entropy "
                       "(LoRA dropout set to 0, which its fast path needs)")


def precision_plan(cfg: RunConfig, hw: dict) -> dict:
    """How numbers are stored and computed on this hardware: the dtype of the loaded weights, the
    autocast the Trainer applies (bf16 / fp16 with a loss scaler), and why.

    Full fine-tuning always loads fp32 weights so the optimiser updates fp32 master weights (mixed
    precision comes from autocast). Adapters leave the frozen base in 16-bit wherever autocast runs in
    16-bit (a GPU, or a CPU with AMX/avx512_bf16: on a SmolLM2-135M LoRA step the per-step weight casts
    were about a tenth of the step); PEFT keeps the adapter weights themselves in fp32, which the
    fp16 loss scaler needs."""
    cuda = hw.get("device") == "cuda"
    hw_bf16 = bool(hw.get("bf16"))
    want = cfg.train.precision
    full = cfg.train.method == "full"
    if want == "auto":
        if cuda:
            want = "bf16" if hw_bf16 else "fp16"
        else:
            want = "bf16" if hw_bf16 else "fp32"
        why = {("cuda", "bf16"): "the GPU has bf16", ("cuda", "fp16"): "the GPU has no bf16 (pre-Ampere): fp16 "
               "autocast with a dynamic loss scaler", ("cpu", "bf16"): "the CPU has AMX or avx512_bf16",
               ("cpu", "fp32"): "the CPU has neither AMX nor avx512_bf16, where bf16 is emulated and slower"}[
            ("cuda" if cuda else "cpu", want)]
    else:
        why = f"precision={want} was chosen"
        if want == "fp16" and not cuda:
            raise ConfigError("train.precision", "fp16 autocast needs a CUDA GPU; use bf16 or fp32 on a CPU")
        if want == "bf16" and cuda and not hw_bf16:
            raise ConfigError("train.precision", "this GPU has no bf16; use fp16 (with a loss scaler) or fp32")
    if want == "fp32" or full or not (cuda or hw_bf16):  # bf16 weights only where bf16 is native
        weights = "float32"
    else:  # a CPU with native bf16 too: autocast then skips re-casting every frozen weight at every step
        weights = "bfloat16" if want == "bf16" else "float16"
    return {"precision": want, "weights_dtype": weights, "bf16": want == "bf16", "fp16": want == "fp16",
            "why": why + ("; fp32 master weights (full fine-tuning)" if full and want != "fp32" else "")}


def _report_to(cfg: RunConfig) -> str:
    import importlib.util

    rep = cfg.train.report_to
    if rep == "none":
        return "none"
    mod = "tensorboard" if rep == "tensorboard" else "trackio"
    if importlib.util.find_spec(mod) is None:
        raise ConfigError("train.report_to", f"{rep} is not installed here (pip install {mod}), or choose none")
    return rep


TRACKIO_PROJECT = "fine-tune-studio"


def _tracking_args(cfg: RunConfig, output_dir: str) -> dict:
    """trackio: every run in one project, named by its run id; a Space only when the user names one
    (TRACKIO_SPACE_ID), private, and no extra static Space after training."""
    import os
    from pathlib import Path

    if cfg.train.report_to != "trackio":
        return {}
    return dict(project=TRACKIO_PROJECT, run_name=Path(output_dir).parent.name,
                trackio_space_id=os.environ.get("TRACKIO_SPACE_ID") or None, trackio_static_space_id=False,
                hub_private_repo=True)


def _common_args(cfg: RunConfig, output_dir: str, *, cuda: bool, prec: dict, has_eval: bool) -> dict:
    t = cfg.train
    return dict(
        output_dir=output_dir,
        learning_rate=t.learning_rate,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps if t.max_steps > 0 else -1,
        per_device_train_batch_size=t.batch_size,
        # No gradients in evaluation: twice the batch fits, and fewer, larger forward passes are faster.
        per_device_eval_batch_size=t.batch_size * 2,
        gradient_accumulation_steps=t.grad_accum,
        warmup_steps=t.warmup_ratio,  # transformers 5: a float below 1 is a ratio of the total steps
        lr_scheduler_type=t.lr_scheduler,
        weight_decay=t.weight_decay,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # a NaN loss must reach our guard, not be averaged away
        eval_strategy=("steps" if t.eval_steps > 0 else "epoch") if has_eval else "no",
        eval_steps=t.eval_steps if t.eval_steps > 0 else None,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        gradient_checkpointing=t.gradient_checkpointing,
        # The training seed also orders the batches (transformers' default, TRL's too): data.seed only
        # splits train from validation. Tied to the split seed, every --seed shuffled alike, so a run's
        # result varied less with it than TRL's (real SmolLM2: 0.232 at seeds 42-44 vs 0.208-0.227).
        seed=t.seed,
        bf16=prec["bf16"],
        fp16=prec["fp16"],  # with fp16, accelerate adds the dynamic loss scaler
        use_cpu=not cuda,
        report_to=_report_to(cfg),
        **_tracking_args(cfg, output_dir),
        disable_tqdm=True,
        dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding",
        save_only_model=False,
        # Several processes: LoRA leaves the frozen base without grads; searching for unused
        # parameters every step would only cost time (and breaks with gradient checkpointing).
        ddp_find_unused_parameters=False if t.num_processes > 1 else None,
    )


def _sampling(cfg: RunConfig, tokenized: bool, prec: dict) -> str:
    # Length-grouped batches waste less compute on padding (CPUs have no padding-free kernels), but
    # their batches are less varied: on builtin:demo they cost answer loss (1.40 vs 1.22 after one
    # epoch) for 19% padding saved. train.py measures the padding random batches would waste and
    # sets prec["group_by_length"] False below 25%. The sampler needs an input_ids column, which
    # only our pre-tokenized SFT rows have.
    on = cfg.train.group_by_length and prec.get("group_by_length", True)
    return "group_by_length" if on and tokenized else "random"


def to_sft_config(cfg: RunConfig, output_dir: str, *, cuda: bool = False, prec: dict | None = None,
                  has_eval: bool = True, bf16: bool = False):
    from trl import SFTConfig

    prec = prec or {"bf16": bf16, "fp16": False}  # bf16=: the older call form (calibrate.py)
    return SFTConfig(**_common_args(cfg, output_dir, cuda=cuda, prec=prec, has_eval=has_eval),
                     train_sampling_strategy=_sampling(cfg, True, prec),
                     max_length=cfg.data.max_seq_len, packing=False, dataset_num_proc=None)


def to_dpo_config(cfg: RunConfig, output_dir: str, *, cuda: bool = False, prec: dict | None = None,
                  has_eval: bool = True):
    from trl import DPOConfig

    prec = prec or {"bf16": False, "fp16": False}
    return DPOConfig(**_common_args(cfg, output_dir, cuda=cuda, prec=prec, has_eval=has_eval),
                     max_length=cfg.data.max_seq_len, beta=cfg.train.dpo_beta)


def to_orpo_config(cfg: RunConfig, output_dir: str, *, cuda: bool = False, prec: dict | None = None,
                   has_eval: bool = True):
    from trl.experimental.orpo import ORPOConfig  # ORPO lives in trl.experimental in TRL 1.x

    prec = prec or {"bf16": False, "fp16": False}
    return ORPOConfig(**_common_args(cfg, output_dir, cuda=cuda, prec=prec, has_eval=has_eval),
                      max_length=cfg.data.max_seq_len, beta=cfg.train.dpo_beta)


def to_kto_config(cfg: RunConfig, output_dir: str, *, cuda: bool = False, prec: dict | None = None,
                  has_eval: bool = True):
    from trl import KTOConfig

    prec = prec or {"bf16": False, "fp16": False}
    # KTO's KL term pairs each row with its neighbours in a fixed-order batch: TRL requires sequential sampling.
    return KTOConfig(**_common_args(cfg, output_dir, cuda=cuda, prec=prec, has_eval=has_eval),
                     train_sampling_strategy="sequential", max_length=cfg.data.max_seq_len, beta=cfg.train.dpo_beta)


def check_grpo_batch(cfg: RunConfig) -> None:
    t, g = cfg.train, cfg.grpo
    if (t.batch_size * t.grad_accum) % g.num_generations:
        raise ConfigError("train.batch_size", f"GRPO's batch counts sampled answers: batch size x accumulation "
                                              f"({t.batch_size} x {t.grad_accum}) must be a multiple of "
                                              f"grpo.num_generations ({g.num_generations})")


def to_grpo_config(cfg: RunConfig, output_dir: str, *, cuda: bool = False, prec: dict | None = None,
                   has_eval: bool = False):
    """GRPO: no evaluation loop (it would sample answers for every validation prompt); the batch
    counts sampled answers, so batch x accumulation must hold whole groups of num_generations."""
    from trl import GRPOConfig

    from .rewards import parse_weights

    check_grpo_batch(cfg)
    g = cfg.grpo
    prec = prec or {"bf16": False, "fp16": False}
    args = _common_args(cfg, output_dir, cuda=cuda, prec=prec, has_eval=False)
    args["include_num_input_tokens_seen"] = "no"  # GRPO counts prompt + answer tokens itself
    return GRPOConfig(**args, num_generations=g.num_generations, max_completion_length=g.max_completion_len,
                      temperature=g.temperature, beta=g.beta, use_vllm=False, log_completions=False,
                      reward_weights=None if g.reward_file else parse_weights(g.reward_weights, 0),
                      disable_dropout=True)


def trainer_class(method: str):
    """The TRL trainer class and the config builder for a method."""
    if method == "grpo":
        from trl import GRPOTrainer

        return GRPOTrainer, to_grpo_config
    if method == "dpo":
        from trl import DPOTrainer

        return DPOTrainer, to_dpo_config
    if method == "orpo":
        from trl.experimental.orpo import ORPOTrainer

        return ORPOTrainer, to_orpo_config
    if method == "kto":
        from trl import KTOTrainer

        return KTOTrainer, to_kto_config
    from trl import SFTTrainer

    return SFTTrainer, to_sft_config
