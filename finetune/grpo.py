"""GRPO (method grpo): TRL's GRPOTrainer on prompts, rewarded by verifiable checks (finetune/rewards.py).

For every prompt the model samples `grpo.num_generations` answers; each is scored by the reward
functions (weighted sum), and the policy moves towards the answers that scored above their group's
mean. No vLLM: generation runs through transformers, so it works on a CPU. With `grpo.beta` 0 no
reference model is kept (TRL's default); with beta > 0 the reference is the base with the LoRA
adapter switched off. The training child (finetune/train.py) calls `load_grpo_data` and
`make_grpo_trainer`; its callback adds `grpo_fields(logs)` to every event: mean reward, reward per
function, completion length, KL, entropy.
"""

from __future__ import annotations

from pathlib import Path

from .config import ConfigError, RunConfig

# TRL's log keys -> our event keys (the live view draws them next to the loss)
_LOG_KEYS = {"reward": "reward", "reward_std": "reward_std", "completions/mean_length": "completion_len",
             "kl": "kl", "entropy": "entropy", "frac_reward_zero_std": "frac_reward_zero_std"}


def grpo_fields(logs: dict) -> dict:
    """The GRPO part of an event, from the trainer's logs ({} for other methods)."""
    out = {ours: round(float(logs[k]), 5) for k, ours in _LOG_KEYS.items() if logs.get(k) is not None}
    per = {k[len("rewards/"):-len("/mean")]: round(float(v), 5) for k, v in logs.items()
           if k.startswith("rewards/") and k.endswith("/mean") and v is not None}
    if per:
        out["rewards"] = per
    return out


def grpo_records(source: str, val_ratio: float, seed: int) -> tuple[list[dict], list[dict], dict]:
    """(train, validation, info) prompt rows of a source: a raw file or builtin, or a prepared dataset."""
    from .data import load_records, split_records
    from .data.load import read_prepared
    from .data.prompts import prompt_rows
    from .paths import datasets_dir, is_safe_name
    from .sources import check_source

    check_source(source)
    p = datasets_dir() / source if is_safe_name(source) else Path(source).expanduser()
    if p.is_dir():
        train, val, _kind = read_prepared(p)
        train_rows, info = prompt_rows(train, source)
        val_rows = prompt_rows(val, source)[0] if val else []
        if info["with_reference"] != (not val_rows or "answer" in val_rows[0]):
            raise ValueError("data.source: the train and validation rows differ in having reference answers")
        return train_rows, val_rows, info
    rows, info = prompt_rows(load_records(source), source)
    train, val = split_records(rows, val_ratio, seed)
    return train, val, info


def check_rewards_fit(cfg: RunConfig, info: dict) -> None:
    """exact and numeric compare with a reference: refuse them on prompt-only data, by name."""
    from .rewards import NEEDS_REFERENCE, parse_reward_names

    need = [n for n in parse_reward_names(cfg.grpo.reward) if n in NEEDS_REFERENCE]
    if need and not info["with_reference"]:
        raise ConfigError("grpo.reward", f"{', '.join(need)} compare with a reference answer, and this data has "
                                         "prompts only: add an 'answer' column or use format, json or length")


def _as_text_prompt(messages: list[dict]) -> str:
    return "\n\n".join(m["content"] for m in messages)


def load_grpo_data(cfg: RunConfig, tokenizer):
    """(train Dataset, None, summary). Prompts stay chat messages when the tokenizer has a chat
    template (TRL applies it with the generation prompt), else they become plain text."""
    from datasets import Dataset

    train, _val, info = grpo_records(cfg.data.source, cfg.data.val_ratio, cfg.data.seed)
    check_rewards_fit(cfg, info)
    if not getattr(tokenizer, "chat_template", None):
        train = [{**r, "prompt": _as_text_prompt(r["prompt"])} for r in train]
    summary = {**info, "rows": len(train), "prompts_per_step": cfg.train.batch_size * cfg.train.grad_accum
               // cfg.grpo.num_generations, "generations_per_prompt": cfg.grpo.num_generations}
    return Dataset.from_list(train), None, summary


def check_grpo(cfg: RunConfig) -> dict:
    """Preflight for GRPO: the data holds prompts (with references when a reward needs them), the
    batch holds whole groups, the reward file may run here, and the rewards build."""
    from .config import check_grpo_batch
    from .rewards import build_rewards, refuse_in_public

    if cfg.grpo.reward_file:
        refuse_in_public()  # before anything else: the answer does not depend on the data
    check_grpo_batch(cfg)
    train, val, info = grpo_records(cfg.data.source, cfg.data.val_ratio, cfg.data.seed)
    if not train:
        raise ConfigError("data.source", "the training split has no rows")
    check_rewards_fit(cfg, info)
    funcs, _ = build_rewards(cfg.grpo)  # a reward file is refused here in public mode
    return {"kind": "prompt", "rows_train": len(train), "rows_validation": len(val),
            "with_reference": info["with_reference"], "rewards": [f.__name__ for f in funcs]}


def make_grpo_trainer(cfg: RunConfig, model, tok, peft_config, train_ds, out_dir: str, plan: dict,
                      guard_classes: tuple, callbacks: list | None = None):
    """GRPOTrainer with the run's rewards and the studio's mixins (non-finite guard, warmup schedule)."""
    from trl import GRPOTrainer

    from .config import to_grpo_config
    from .rewards import build_rewards

    funcs, weights = build_rewards(cfg.grpo)
    args = to_grpo_config(cfg, out_dir, cuda=plan["device"] == "cuda", prec=plan)
    args.reward_weights = weights
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    cls = type("GuardedGRPOTrainer", (*guard_classes, GRPOTrainer), {})
    return cls(model=model, reward_funcs=funcs, args=args, train_dataset=train_ds, processing_class=tok,
               callbacks=callbacks or [], peft_config=peft_config)
