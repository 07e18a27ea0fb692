"""The training child process: `python -m finetune train --run RUN_DIR [--resume]`.

Reads the run's config.json, loads the model and data, trains with TRL (SFTTrainer; DPOTrainer,
ORPOTrainer or KTOTrainer for preference data) and PEFT, and writes flushed events and an atomic
status file so that the UI and the CLI can follow it. A STOP file (or SIGTERM) stops it cleanly at
the next step: it saves a checkpoint and the adapter and says `stopped`. A non-finite loss or
gradient norm, checked at every optimiser step, stops it as `failed`: nothing is saved after it and
the last good checkpoint is what resume uses. On a CUDA machine with unsloth installed, Unsloth's
FastLanguageModel loads the model (status `backend` and `backend_why` say which one ran and why).
When the run ends, the next run waiting in the queue starts (runs.dispatch).
"""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

from . import parallel
from .config import (LORA_METHODS, PREFERENCE_METHODS, ConfigError, RunConfig, choose_backend, precision_plan,
                     to_peft_config, to_unsloth_peft_kwargs, trainer_class)
from .grpo import grpo_fields
from .paths import atomic_write_text, read_json
from .monitor import kept_sentence
from .runs import append_event, last_checkpoint, now_iso, update_status
from .schedule import WarmupSchedule
from .sft_step import LeanSFTLoss, PrefixState, text_config
from .speed import Phases, ThreadTuning


def redact(text: str) -> str:
    """Remove any token we know of from text that may reach a log or a status file."""
    for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "FINETUNE_HF_TOKEN"):
        v = os.environ.get(key)
        if v and len(v) >= 8:
            text = text.replace(v, "***")
    return text


def friendly_error(exc: BaseException) -> str:
    msg = f"{type(exc).__name__}: {exc}"
    low = msg.lower()
    if "out of memory" in low or isinstance(exc, MemoryError):
        msg = ("Out of memory. Try, in this order: a smaller batch size (raise gradient accumulation to keep "
               "the effective batch), a shorter max sequence length, gradient checkpointing, QLoRA (4-bit) on a "
               f"GPU, or a smaller model. ({msg[:300]})")
    return redact(msg)


def memory_in_use_gb() -> float | None:
    """Memory this process holds now: allocated CUDA memory on a GPU, else the resident set size."""
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return round(torch.cuda.memory_allocated() / 1e9, 3)
    except Exception:
        pass
    try:
        with open("/proc/self/statm") as f:
            return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9, 3)
    except (OSError, ValueError, IndexError):
        return None


def _make_callback(d: Path):
    from transformers import TrainerCallback

    class StudioCallback(TrainerCallback):
        """Writes events and status, and honours STOP. Non-finite values are the trainer guard's job.

        With several processes every rank runs this callback; only rank 0 writes, and the ranks
        agree on stopping (one all-reduce per step) so that none waits forever for the others."""

        def __init__(self):
            self.t0 = time.time()
            self.start_step = 0
            self.last_status = 0.0
            self.last_tokens = (0, self.t0)
            self.nonfinite: str | None = None
            self.stopped = False
            self.mfu_of = lambda tokens_per_s: None  # set by the run once the model is known

        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.time()
            self.start_step = state.global_step
            self.last_tokens = (state.num_input_tokens_seen or 0, self.t0)
            if state.is_world_process_zero:
                update_status(d, state="running", total_steps=state.max_steps, step=state.global_step,
                              epochs=args.num_train_epochs)

        def _eta(self, state) -> float | None:
            done = state.global_step - self.start_step
            if done <= 0 or not state.max_steps:
                return None
            return (time.time() - self.t0) / done * (state.max_steps - state.global_step)

        def on_step_end(self, args, state, control, **kw):
            # Ranks may see the STOP file at different steps: they take the decision together.
            if _agree((d / "STOP").exists(), args.device) and not self.stopped:
                self.stopped = True
                control.should_training_stop = True
                control.should_save = True
            # An evaluation less than half an interval before the last step only repeats the final one
            # that follows it (a few seconds of a real model each): skipped, alike on every rank.
            left = (state.max_steps or 0) - state.global_step
            if control.should_evaluate and not self.stopped and 0 < left < (args.eval_steps or 0) / 2:
                control.should_evaluate = False
            if not state.is_world_process_zero:
                return
            now = time.time()
            if now - self.last_status > 1.0 or self.stopped:
                self.last_status = now
                update_status(d, step=state.global_step, total_steps=state.max_steps, epoch=state.epoch,
                              eta_s=self._eta(state), elapsed_s=round(now - self.t0, 2),
                              memory_gb=memory_in_use_gb(), state="stopping" if self.stopped else "running")

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            if "train_loss" in logs:
                return  # the closing summary is not a step
            # The logged eval loss is gathered over the ranks: every rank takes the same decision.
            v = logs.get("eval_loss")
            if v is not None and not math.isfinite(float(v)):
                self.nonfinite = f"eval_loss became {v} at step {state.global_step}"
                control.should_training_stop = True
                control.should_save = False
            if not state.is_world_process_zero:
                return
            now = time.time()
            tokens = state.num_input_tokens_seen or 0
            t_prev, time_prev = self.last_tokens
            tps = (tokens - t_prev) / (now - time_prev) if now > time_prev and tokens > t_prev else None
            self.last_tokens = (tokens, now)
            mem = memory_in_use_gb()
            mfu = self.mfu_of(tps) if tps else None
            ev = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4),
                  "loss": logs.get("loss"), "eval_loss": logs.get("eval_loss"),
                  "learning_rate": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm"),
                  "tokens_per_s": round(tps, 1) if tps else None, "mfu": mfu, "elapsed_s": round(now - self.t0, 3),
                  "memory_gb": mem,
                  "mean_token_accuracy": logs.get("mean_token_accuracy", logs.get("eval_mean_token_accuracy")),
                  **grpo_fields(logs)}
            append_event(d, ev)
            fields = {"step": state.global_step, "eta_s": self._eta(state), "memory_gb": mem}
            if ev["loss"] is not None:
                fields["loss"] = ev["loss"]
            if ev["eval_loss"] is not None:
                fields["eval_loss"] = ev["eval_loss"]
            fields.update({k: ev[k] for k in ("reward", "rewards", "completion_len", "kl") if k in ev})
            if tps:
                fields["tokens_per_s"] = round(tps, 1)
                fields["mfu"] = mfu
            update_status(d, **fields)

    return StudioCallback()


def _agree(flag: bool, device) -> bool:
    """True on every rank when any rank says so (one all-reduce); just `flag` with one process."""
    if parallel.world_size() <= 1:
        return bool(flag)
    import torch
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


class NonFiniteGuard:
    """Mixed into the TRL trainer class: checks the loss of every micro-batch and the gradient norm
    of every optimiser step (the Trainer only looks at them at logging steps), and once either is
    not finite, cancels that step's save and evaluation and ends training. So no checkpoint after
    the first bad step exists, and resume starts from the last good one."""

    fts_nonfinite: str | None = None

    def training_step(self, model, inputs, *args, **kwargs):
        import torch

        loss = super().training_step(model, inputs, *args, **kwargs)
        # One host sync per micro-batch: negligible next to its forward and backward.
        if self.fts_nonfinite is None and not bool(torch.isfinite(loss.detach()).all()):
            self.fts_nonfinite = f"loss became {float(loss.detach().float().mean())} at step {self.state.global_step + 1}"
        return loss

    def _maybe_log_save_evaluate(self, tr_loss, grad_norm, *args, **kwargs):
        if self.fts_nonfinite is None and grad_norm is not None:
            g = float(grad_norm)
            # With fp16 the loss scaler overflows now and then on purpose: it skips that step and
            # lowers the scale; only a non-finite norm on a step that was applied is a failure.
            skipped = self.args.fp16 and getattr(self.accelerator, "optimizer_step_was_skipped", False)
            if not math.isfinite(g) and not skipped:
                self.fts_nonfinite = f"grad_norm became {g} at step {self.state.global_step}"
        # A micro-batch loss is each rank's own: the ranks stop together or some would wait forever.
        if _agree(self.fts_nonfinite is not None, self.args.device) and self.fts_nonfinite is None:
            self.fts_nonfinite = f"another process saw a non-finite loss at step {self.state.global_step}"
        if self.fts_nonfinite is not None:
            self.control.should_save = False
            self.control.should_evaluate = False
            self.control.should_training_stop = True
        return super()._maybe_log_save_evaluate(tr_loss, grad_norm, *args, **kwargs)


GUARDS = (NonFiniteGuard, WarmupSchedule)  # mixed into every trainer, GRPO's too


GROUP_BY_LENGTH_MIN_WASTE = 0.25  # below this much padding, varied random batches are worth more


def padding_waste(lengths: list[int], batch_size: int, seed: int = 0) -> float:
    """Share of a random batch's tokens that would be padding (rows padded to the batch's longest)."""
    import random

    lengths = list(lengths)
    random.Random(seed).shuffle(lengths)
    batches = [lengths[i:i + batch_size] for i in range(0, len(lengths), batch_size)]
    padded = sum(len(b) * max(b) for b in batches if b)
    return 1.0 - sum(lengths) / padded if padded else 0.0


def _chunks(ids: list[int], n: int) -> list[list[int]]:
    return [ids[i:i + n] for i in range(0, len(ids), n)]


def _cpt_examples(tokenizer, rows: list[dict], max_seq_len: int) -> tuple[list[dict], dict]:
    """Continued pretraining: every token is trained, and a long text becomes several blocks of
    max_seq_len tokens instead of being cut off (each block stays within one document)."""
    out, total = [], 0
    for r in rows:
        ids = tokenizer(r["text"], add_special_tokens=True)["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids = ids + [tokenizer.eos_token_id]
        total += len(ids)
        for block in _chunks(ids, max_seq_len):
            if len(block) >= 2:  # one token predicts nothing
                out.append({"input_ids": block, "labels": list(block)})
    return out, {"rows": len(rows), "rows_kept": len(rows), "blocks": len(out), "tokens": total,
                 "trained_tokens": total, "trained_share": 1.0, "rows_truncated": 0, "notes": []}


def load_data(cfg: RunConfig, tokenizer):
    from datasets import Dataset

    from .data import load_prepared
    from .tokenize import tokenize_rows

    method = cfg.train.method
    if method == "grpo":  # prompt rows, not tokenized here: the trainer samples the answers
        from .grpo import load_grpo_data

        return load_grpo_data(cfg, tokenizer)
    train_rows, val_rows, kind = load_prepared(cfg.data.source, val_ratio=cfg.data.val_ratio, seed=cfg.data.seed)

    def ds(rows):
        return Dataset.from_list(rows) if rows else None

    if method in ("dpo", "orpo"):
        if kind != "preference":
            raise ValueError(f"data.source: {method.upper()} needs preference rows (prompt/chosen/rejected), "
                             f"this dataset is {kind!r}")
        return ds(train_rows), ds(val_rows), {"kind": kind, "rows": len(train_rows)}
    if method == "kto":
        if kind == "preference":  # a pair is one good and one bad answer: KTO learns from both
            train_rows, val_rows = _unpair(train_rows), _unpair(val_rows)
        elif kind != "kto":
            raise ValueError(f"data.source: KTO needs rows with prompt, completion and a true/false label "
                             f"(or preference pairs), this dataset is {kind!r}")
        return ds(train_rows), ds(val_rows), {"kind": kind, "rows": len(train_rows)}
    if method == "cpt":
        if kind != "text":
            raise ValueError(f"data.source: continued pretraining trains on plain text (a .txt file or a 'text' "
                             f"column), this dataset is {kind!r}; use lora for instruction data")
        train, summary = _cpt_examples(tokenizer, train_rows, cfg.data.max_seq_len)
        val, _ = _cpt_examples(tokenizer, val_rows, cfg.data.max_seq_len) if val_rows else ([], None)
        summary["kind"] = kind
        return ds(train), ds(val), summary
    if kind not in ("messages", "prompt_completion", "text"):
        raise ValueError(f"data.source: {kind!r} rows are for DPO/ORPO/KTO, not supervised fine-tuning; "
                         f"choose one of those methods")
    train, summary = tokenize_rows(tokenizer, train_rows, kind, cfg.data.max_seq_len)
    if not train or summary["trained_tokens"] == 0:
        raise ValueError("data.source: no token would be trained (every label is masked); check the chat "
                         "template and that rows end with an assistant answer")
    val, _ = tokenize_rows(tokenizer, val_rows, kind, cfg.data.max_seq_len) if val_rows else ([], None)
    summary["kind"] = kind
    return ds(train), ds(val), summary


def _unpair(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        out.append({"prompt": r["prompt"], "completion": r["chosen"], "label": True})
        out.append({"prompt": r["prompt"], "completion": r["rejected"], "label": False})
    return out


def resolve_plan(cfg: RunConfig) -> dict:
    """Which backend and precision this run gets on this machine, and why (goes into status.json)."""
    from .hardware import detect_hardware
    from .modeling import unsloth_installed

    hw = detect_hardware()
    backend, why = choose_backend(cfg, hw, unsloth_installed() if hw.get("device") == "cuda" else False)
    prec = precision_plan(cfg, hw)
    return {"device": hw.get("device", "cpu"), "backend": backend, "backend_why": why, **prec}


def _init_adapter_dir(cfg: RunConfig) -> str:
    """The adapter of the finished run a preference run continues from, checked."""
    from .runs import RunError, artifact_dir, load_config, read_status

    src = cfg.train.init_from_run
    try:
        st, src_cfg, art = read_status(src), load_config(src), artifact_dir(src)
    except RunError as exc:
        raise ConfigError("train.init_from_run", str(exc)) from None
    if st.get("state") != "completed" or art is None or not (art / "adapter_config.json").exists():
        raise ConfigError("train.init_from_run", f"run {src} has no finished adapter (state {st.get('state')})")
    if src_cfg.train.method not in LORA_METHODS:
        raise ConfigError("train.init_from_run", f"run {src} trained {src_cfg.train.method}, not a LoRA adapter")
    if src_cfg.model.model_id != cfg.model.model_id:
        raise ConfigError("train.init_from_run", f"run {src} adapted {src_cfg.model.model_id}, "
                                                 f"not {cfg.model.model_id}")
    return str(art)


def build_model(cfg: RunConfig, plan: dict | None = None):
    """(model, tokenizer, peft_config or None, backend name)."""
    from .modeling import load_model, load_tokenizer

    plan = plan or resolve_plan(cfg)
    method = cfg.train.method
    if plan["backend"] == "unsloth":
        import unsloth  # noqa: F401  -- must come before transformers/peft are used
        from unsloth import FastLanguageModel

        from .builtin import resolve_model

        kw = to_unsloth_peft_kwargs(cfg)
        model, tok = FastLanguageModel.from_pretrained(
            resolve_model(cfg.model.model_id), max_seq_length=kw.pop("max_seq_length"),
            load_in_4bit=(method == "qlora"), dtype=None)
        model = FastLanguageModel.get_peft_model(model, **kw)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return model, tok, None, "unsloth"
    tok = load_tokenizer(cfg.model.model_id, trust_remote_code=cfg.model.trust_remote_code)
    model = load_model(cfg.model.model_id, load_in_4bit=(method == "qlora"),
                       trust_remote_code=cfg.model.trust_remote_code, dtype=plan["weights_dtype"])
    if method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
    if cfg.train.init_from_run:
        from peft import PeftModel

        # TRL's preference trainers copy a loaded adapter as the frozen reference: the SFT model is
        # the reference, and training continues the same adapter.
        model = PeftModel.from_pretrained(model, _init_adapter_dir(cfg), is_trainable=True)
        return model, tok, None, "transformers"
    return model, tok, to_peft_config(cfg), "transformers"


def _use_trackio_dir(folder: Path) -> None:
    """trackio reads TRACKIO_DIR once, when first imported (trl imports it with its trainers): the
    training child sets it before that, so the records stay in the run folder."""
    os.environ["TRACKIO_DIR"] = str(folder)
    loaded = sys.modules.get("trackio.utils")
    if loaded is not None and Path(loaded.TRACKIO_DIR) != folder:
        raise ConfigError("train.report_to", f"trackio was loaded in this process before the run began and "
                                             f"writes elsewhere; train in a fresh process (python -m finetune train)")


def _mfu_of(model, train_ds, cfg: RunConfig, plan: dict):
    """The callback's tokens/s -> MFU function for this model, precision and machine."""
    from .hardware import detect_hardware
    from .modeling import process_cores
    from .paths import home
    from .speed import mfu_function

    if train_ds is not None and "input_ids" in train_ds.column_names and len(train_ds):
        lengths = [len(x) for x in train_ds["input_ids"]]
        mean_len = sum(lengths) / len(lengths)
    else:  # preference rows are tokenized by the trainer
        mean_len = cfg.data.max_seq_len / 2
    return mfu_function(model, mean_len, detect_hardware(), plan["precision"], process_cores()[0], home() / "cache")


def sft_step_applies(cfg: RunConfig, plan: dict) -> bool:
    """SFT-style runs on transformers get finetune.sft_step's loss: not the preference methods (their
    trainers build their own batches), GRPO, prompt/prefix tuning (which feeds the cache itself),
    Unsloth's patched forward, or several processes (each rank would choose its path alone)."""
    return (cfg.train.method not in (*PREFERENCE_METHODS, "grpo", "prefix") and plan.get("backend") != "unsloth"
            and parallel.world_size() == 1)


def prefix_sharing_off(cfg: RunConfig, model) -> str:
    """Why a run cannot share its batches' prefixes (finetune.sft_step), or "" when it can."""
    if cfg.train.gradient_checkpointing:
        return "gradient checkpointing recomputes the layers without the shared cache"
    if cfg.train.method not in ("full",) and cfg.lora.dropout > 0:
        return f"LoRA dropout {cfg.lora.dropout}: one dropout mask would serve every row's prefix"
    text = text_config(model)
    for key in ("attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop", "dropout"):
        v = getattr(text, key, 0) or 0
        if isinstance(v, (int, float)) and v > 0:
            return f"the model's {key} {v}: one dropout mask would serve every row's prefix"
    return ""


def make_trainer(cfg: RunConfig, model, tok, peft_config, train_ds, eval_ds, out_dir: str, plan: dict,
                 callbacks: list | None = None):
    """The TRL trainer for the method, with the non-finite guard mixed in."""
    if cfg.train.method == "grpo":
        from .grpo import make_grpo_trainer

        return make_grpo_trainer(cfg, model, tok, peft_config, train_ds, out_dir, plan, GUARDS, callbacks)
    cls, to_args = trainer_class(cfg.train.method)
    mixins = (*GUARDS, ThreadTuning) + ((LeanSFTLoss,) if sft_step_applies(cfg, plan) else ())
    guarded = type(f"Guarded{cls.__name__}", (*mixins, cls), {})
    args = to_args(cfg, out_dir, cuda=plan["device"] == "cuda", prec=plan, has_eval=eval_ds is not None)
    return guarded(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tok,
                   callbacks=callbacks or [], peft_config=peft_config)


def keep_lora_inputs_16bit(model, cfg: RunConfig, plan: dict) -> bool:
    """PEFT casts every LoRA layer's input to the adapter's fp32 before its dropout and lora_A, and
    autocast casts it straight back to 16 bits for the matmul: on a SmolLM2-135M step (4 x 512
    tokens, CPU bf16) those copies were 12% of the step. Where the frozen base is 16-bit and autocast
    runs the step (training and evaluation both go through the Trainer's autocast), the inputs stay
    16-bit; the adapter weights and their gradients stay fp32. Not for GRPO (it samples outside
    autocast), quantized bases (bitsandbytes casts on its own), DoRA (its weight norm would be taken
    in 16 bits) or Unsloth. Returns whether it applied."""
    if (cfg.train.method in ("grpo", "qlora", "full", "prefix", "dora") or plan.get("backend") == "unsloth"
            or plan.get("weights_dtype") == "float32" or not (plan.get("bf16") or plan.get("fp16"))):
        return False
    from peft.tuners.tuners_utils import BaseTunerLayer

    n = 0
    for module in model.modules():
        if isinstance(module, BaseTunerLayer) and hasattr(module, "cast_input_dtype_enabled"):
            module.cast_input_dtype_enabled = False
            n += 1
    return n > 0


def _save_artifact(trainer, tokenizer, d: Path, method: str, kept_from: Path | None = None) -> Path | None:
    """Save the adapter (or full model) into a temp folder, then move it into place. With kept_from
    (the best evaluation's saved weights, finetune.monitor), those become the artifact instead.

    Several processes: sharded weights (FSDP, ZeRO-3) are gathered by trainer.save_model, which
    every rank must call; otherwise rank 0 alone saves. Only rank 0 moves the folder into place."""
    name = "model" if method == "full" else "adapter"
    tmp = d / f".{name}.tmp"
    main = parallel.rank() == 0
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    model = trainer.model
    if parallel.world_size() > 1 and (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
        trainer.save_model(str(tmp))
        if main:
            (tmp / "training_args.bin").unlink(missing_ok=True)
    elif not main:
        pass
    elif kept_from is not None:
        shutil.copytree(kept_from, tmp)
    elif hasattr(model, "peft_config") and "ref" in getattr(model, "peft_config", {}):
        # DPO/KTO on a finished run's adapter add a frozen "ref" copy: save only the trained one.
        model.save_pretrained(tmp, selected_adapters=["default"])
    else:
        model.save_pretrained(tmp)
    if not main:
        return None
    tokenizer.save_pretrained(tmp)
    final = d / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def write_model_card(d: Path, cfg: RunConfig, status: dict) -> None:
    lines = [
        "---", "library_name: peft" if cfg.train.method != "full" else "library_name: transformers",
        f"base_model: {cfg.model.model_id}" if not cfg.model.model_id.startswith("builtin:") else "tags: [fine-tune-studio]",
        "---", "", f"# {d.name}", "",
        f"Fine-tuned with Fine-Tune Studio: **{cfg.train.method}** on `{cfg.data.source}` from `{cfg.model.model_id}`.", "",
        "| setting | value |", "|---|---|",
        f"| learning rate | {cfg.train.learning_rate} |", f"| epochs | {cfg.train.epochs} |",
        f"| batch size | {cfg.train.batch_size} x {cfg.train.grad_accum} |", f"| max sequence length | {cfg.data.max_seq_len} |",
    ]
    if cfg.train.method not in ("full", "prefix"):
        lines += [f"| LoRA rank / alpha / dropout | {cfg.lora.r} / {cfg.lora.alpha} / {cfg.lora.dropout} |",
                  f"| target modules | {cfg.lora.target_modules} |"]
    if cfg.train.method == "grpo":
        lines.append(f"| GRPO rewards | {cfg.grpo.reward}{' + ' + Path(cfg.grpo.reward_file).name if cfg.grpo.reward_file else ''}"
                     f", {cfg.grpo.num_generations} answers per prompt, beta {cfg.grpo.beta} |")
    lines += ["", "## Results", "", f"- final training loss: {status.get('loss')}",
              *([f"- final mean reward: {status.get('reward')}"] if status.get("reward") is not None else []),
              f"- final validation loss: {status.get('final_eval_loss', status.get('eval_loss'))}",
              f"- steps: {status.get('step')}", f"- {kept_sentence(status)}",
              *([f"- stopped early: {status.get('early_stop_reason')}"] if status.get("early_stopped") else []),
              f"- duration: {status.get('duration_s')} s", ""]
    if cfg.model.model_id.startswith("builtin:"):
        lines += ["The base is Fine-Tune Studio's randomly initialised demo model; this adapter only demonstrates the pipeline.", ""]
    atomic_write_text(d / "README.md", "\n".join(lines))


def _step_of(ckpt: str) -> int:
    return int(Path(ckpt).name.rsplit("-", 1)[1])


def prepare_resume(d: Path) -> str:
    """Before resuming: pick the last complete checkpoint, remove checkpoints that are incomplete or
    come after it (a kill during a save, or saved after a non-finite step), and drop the events logged
    after it, so the curve continues from where training really continues."""
    ckpt = last_checkpoint(d)
    if ckpt is None:
        raise ValueError("no complete checkpoint to resume from")
    step = _step_of(ckpt)
    ck = d / "checkpoints"
    for c in ck.iterdir():
        if c.name.startswith("checkpoint-") and str(c) != ckpt:
            try:
                later = int(c.name.rsplit("-", 1)[1]) > step
            except ValueError:
                later = True
            if later or not (c / "trainer_state.json").exists():
                shutil.rmtree(c, ignore_errors=True)
    ev = d / "events.jsonl"
    kept = []
    if ev.exists():
        for line in ev.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except ValueError:
                continue
    atomic_write_text(ev, "".join(x + "\n" for x in kept))
    st = read_json(d / "status.json", {}) or {}
    update_status(d, step=step, events_generation=int(st.get("events_generation") or 0) + 1, bad_from_step=None,
                  resumed_from_step=step)
    return ckpt


def _add_rank_pid(d: Path, pid: int) -> None:
    import fcntl

    from .paths import atomic_write_json

    lock = os.open(d, os.O_RDONLY)  # the same lock as update_status: ranks append concurrently
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        st = read_json(d / "status.json", default={}) or {}
        st["rank_pids"] = sorted(set(st.get("rank_pids") or []) | {pid})
        atomic_write_json(d / "status.json", st)
    finally:
        os.close(lock)


SPARE_IDLE_S = 600  # twice runs.SPARE_TAKE_S: a spare never quits while it may still be handed a run


def serve_spare(wait_log: str) -> int:
    """The spare training child (runs.warm_spare): import the training libraries, then read one line
    {"run": folder, "resume": bool} from stdin and train that run, its output going to the run's
    train.log (what the imports printed first included). End of input: no run came; exit."""
    from .speed import import_training_stack

    phases = Phases()
    import_training_stack("lora", "transformers")
    phases.mark("imports")
    import select

    # A spare nobody takes (its run queued behind another, a failed check in a long-lived app) does
    # not hold its memory for ever: the parent hands over only within SPARE_TAKE_S (runs.py).
    ready, _, _ = select.select([sys.stdin], [], [], SPARE_IDLE_S)
    line = sys.stdin.readline() if ready else ""
    phases.mark("waiting_for_run")  # the parent checks the run meanwhile (preflight)
    wait = Path(wait_log)
    if not line.strip():
        wait.unlink(missing_ok=True)
        return 0
    job = json.loads(line)
    d = Path(job["run"])
    fd = os.open(d / "train.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, wait.read_bytes())
    except OSError:
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    wait.unlink(missing_ok=True)
    return train_run(d, resume=bool(job.get("resume")), own_process=True, phases=phases)


def train_run(run_path: str | os.PathLike, resume: bool = False, own_process: bool = False,
              phases=None) -> int:
    """own_process: this process exists only for this run (`finetune train --run`), so it may skip
    loading what the run does not need for good (finetune.speed.import_training_stack). phases: the
    time already spent (a spare child's imports and wait), continued in status.json's phases_s."""
    d = Path(run_path).resolve()
    try:
        return _train_run(d, resume, own_process, phases)
    finally:
        try:
            if parallel.rank() != 0:
                raise StopIteration  # only rank 0 hands the device over
  # this run no longer holds the device: start the next one waiting in the queue
            from .runs import dispatch

            dispatch()
        except StopIteration:
            pass
        except Exception as exc:  # noqa: BLE001 -- the queue is retried at the next status read
            sys.stderr.write(f"queue dispatch failed: {redact(str(exc))}\n")


def _train_run(d: Path, resume: bool, own_process: bool = False, phases=None) -> int:
    phases = phases or Phases()
    cfg = RunConfig.from_dict(read_json(d / "config.json"))
    t_start = time.time()
    world, main = parallel.world_size(), parallel.rank() == 0
    if world > 1:
        # Under accelerate launch the launcher's pid stays in status.json (Stop kills its group);
        # each rank dies with the launcher and records its pid for a forced stop.
        parallel.die_with_parent()
        _add_rank_pid(d, os.getpid())
        if main:
            update_status(d, state="running", started=now_iso(), error=None, queue_position=None, waiting=False,
                          world_size=world)
    else:
        update_status(d, state="running", pid=os.getpid(), started=now_iso(), error=None, queue_position=None,
                      waiting=False)
    status = update_status if main else (lambda *a, **k: {})  # only rank 0 writes the run folder
    signal.signal(signal.SIGTERM, lambda *_: (d / "STOP").write_text("SIGTERM"))
    try:
        if cfg.train.report_to == "tensorboard":  # transformers 5 reads the folder from the environment
            os.environ["TENSORBOARD_LOGGING_DIR"] = str(d / "tb")
        if cfg.train.report_to == "trackio":
            _use_trackio_dir(d / "trackio")
        plan = resolve_plan(cfg)
        status(d, backend=plan["backend"], backend_why=plan["backend_why"], precision=plan["precision"],
               precision_why=plan["why"])
        from .speed import import_training_stack, start_threads

        tuner = start_threads(plan["device"], lambda n, why: status(d, threads=n, threads_why=why))
        phases.mark("setup")
        import_training_stack(cfg.train.method, plan["backend"], skip_unused=own_process)
        phases.mark("imports")
        model, tok, peft_config, backend = build_model(cfg, plan)
        phases.mark("model_load")
        train_ds, eval_ds, summary = load_data(cfg, tok)
        phases.mark("data")
        if cfg.train.group_by_length and "input_ids" in train_ds.column_names:
            waste = padding_waste([len(x) for x in train_ds["input_ids"]], cfg.train.batch_size, cfg.train.seed)
            plan["group_by_length"] = waste >= GROUP_BY_LENGTH_MIN_WASTE
            summary["random_batch_padding"] = round(waste, 3)
            summary["batching"] = ("length-grouped" if plan["group_by_length"] else
                                   f"random (random batches waste only {waste:.0%} on padding)")
        status(d, backend=backend, data_summary=summary)
        cb = _make_callback(d)
        from .monitor import make_monitor

        best = make_monitor(d, keep_best=cfg.train.keep_best, patience=cfg.train.early_stopping_patience,
                            threshold=cfg.train.early_stopping_threshold, writer=main)
        from transformers import set_seed

        set_seed(cfg.train.seed)  # adapter init draws from the global RNG: make runs reproducible
        from .sweep_trial import trial_callbacks  # a trial of a hyperparameter search reports and may be pruned

        trainer = make_trainer(cfg, model, tok, peft_config, train_ds, eval_ds, str(d / "checkpoints"), plan,
                               [cb, best, *trial_callbacks(d, cb)])
        trainer.fts_tuner = tuner
        plan["lora_input_cast"] = keep_lora_inputs_16bit(trainer.model, cfg, plan)
        if isinstance(trainer, LeanSFTLoss):
            why_not = prefix_sharing_off(cfg, trainer.model)
            if why_not:
                status(d, prefix_sharing=f"off: {why_not}")
            else:
                trainer.fts_prefix = PrefixState(lambda text: status(d, prefix_sharing=text))
        cb.mfu_of = _mfu_of(trainer.model, train_ds, cfg, plan)
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in trainer.model.parameters())
        status(d, trainable_params=trainable, total_params=total, memory_gb=memory_in_use_gb(),
               phases_s=phases.mark("trainer_setup"))
        if resume:  # rank 0 tidies the folder; the others resume from the same (last complete) checkpoint
            ckpt = prepare_resume(d) if main else last_checkpoint(d)
        else:
            ckpt = None
        if _agree((d / "STOP").exists(), trainer.args.device):  # asked to stop while loading: nothing to save
            status(d, state="stopped", error=None, duration_s=round(time.time() - t_start, 2),
                   resumable=last_checkpoint(d) is not None, finished=now_iso())
            return 0
        # The libraries and the model are half a million long-lived objects: frozen, the garbage
        # collections during training (accelerate calls gc.collect() at the start) skip them (~0.5 s).
        gc.freeze()
        result = trainer.train(resume_from_checkpoint=ckpt)
        phases.mark("train")
        pst = getattr(trainer, "fts_prefix", None)
        if pst is not None and pst.total:
            status(d, prefix_sharing_saved=round(pst.saved / pst.total, 3))
        if tuner is not None and not tuner.done:  # fewer steps than the measuring takes: decide anyway
            tuner.decide()
        nonfinite = trainer.fts_nonfinite or cb.nonfinite
        if nonfinite:
            bad = trainer.state.global_step
            status(d, state="failed", error=f"Training stopped: {nonfinite}. The last good checkpoint is kept; "
                   "lower the learning rate and resume or start again.", bad_from_step=bad,
                   resumable=last_checkpoint(d) is not None, duration_s=round(time.time() - t_start, 2),
                   phases_s=phases.out)
            return 1
        final_eval = None
        if eval_ds is not None and not cb.stopped:
            final_eval = trainer.evaluate().get("eval_loss")  # every rank: evaluation is collective
            if final_eval is not None and main:
                append_event(d, {"step": trainer.state.global_step, "epoch": round(trainer.state.epoch or 0, 4),
                                 "loss": None, "eval_loss": final_eval, "learning_rate": None, "grad_norm": None,
                                 "tokens_per_s": None, "elapsed_s": round(time.time() - cb.t0, 3),
                                 "memory_gb": memory_in_use_gb()})
        phases.mark("final_eval")
        last_step = trainer.state.global_step
        kept_from = best.choose_artifact(last_step, last_evaluated=final_eval is not None)
        _save_artifact(trainer, tok, d, cfg.train.method, kept_from)
        phases.mark("save")
        if not main:
            return 0
        if not cb.stopped:  # a stopped run may resume and needs its best so far; a finished one does not
            shutil.rmtree(best.best_dir, ignore_errors=True)
        state = "stopped" if cb.stopped else "completed"
        metrics = result.metrics or {}
        st = update_status(
            d, state=state, step=trainer.state.global_step, eta_s=0 if state == "completed" else None,
            eval_loss=final_eval if final_eval is not None else read_json(d / "status.json", {}).get("eval_loss"),
            train_loss_avg=metrics.get("train_loss"), duration_s=round(time.time() - t_start, 2),
            train_runtime_s=metrics.get("train_runtime"), finished=now_iso(),
            kept_step=best.best_step if kept_from else last_step, final_eval_loss=final_eval,
            resumable=state == "stopped" and last_checkpoint(d) is not None, phases_s=phases.mark("finish"))
        try:
            write_model_card(d, cfg, st)
        except Exception as exc:  # the adapter is saved; a card problem must not fail the run
            sys.stderr.write(f"model card not written: {redact(str(exc))}\n")
        return 0
    except BaseException as exc:  # noqa: BLE001 -- every failure must land in status.json
        msg = friendly_error(exc)
        sys.stderr.write(redact(traceback.format_exc()))
        if world > 1:  # the first rank to fail says why; the others' errors are its echoes
            msg = f"rank {parallel.rank()}: {msg}"
        update_status(d, only_if_state=("queued", "running", "stopping") if world > 1 else None, state="failed",
                      error=msg, resumable=last_checkpoint(d) is not None, duration_s=round(time.time() - t_start, 2))
        return 1
    finally:
        gc.unfreeze()
        if main:
            (d / "STOP").unlink(missing_ok=True)
            shutil.rmtree(d / ".adapter.tmp", ignore_errors=True)
            shutil.rmtree(d / ".model.tmp", ignore_errors=True)
