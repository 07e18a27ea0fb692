"""The training child process: `python -m finetune train --run RUN_DIR [--resume]`.

Reads the run's config.json, loads the model and data, trains with TRL (SFTTrainer, or DPOTrainer
for preference data) and PEFT, and writes flushed events and an atomic status file so that the UI
and the CLI can follow it. A STOP file (or SIGTERM) stops it cleanly at the next step: it saves a
checkpoint and the adapter and says `stopped`. A non-finite loss stops it as `failed`, keeping the
last good checkpoint. On a CUDA machine with unsloth installed, unsloth loads the model.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

from .config import RunConfig, to_dpo_config, to_peft_config, to_sft_config
from .paths import atomic_write_text, read_json
from .monitor import kept_sentence
from .runs import append_event, last_checkpoint, now_iso, update_status


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


def _make_callback(d: Path):
    from transformers import TrainerCallback

    class StudioCallback(TrainerCallback):
        """Writes events and status, honours STOP, and stops on a non-finite loss."""

        def __init__(self):
            self.t0 = time.time()
            self.start_step = 0
            self.last_status = 0.0
            self.last_tokens = (0, self.t0)
            self.nonfinite: str | None = None
            self.stopped = False

        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.time()
            self.start_step = state.global_step
            self.last_tokens = (state.num_input_tokens_seen or 0, self.t0)
            update_status(d, state="running", total_steps=state.max_steps, step=state.global_step,
                          epochs=args.num_train_epochs)

        def _eta(self, state) -> float | None:
            done = state.global_step - self.start_step
            if done <= 0 or not state.max_steps:
                return None
            return (time.time() - self.t0) / done * (state.max_steps - state.global_step)

        def on_step_end(self, args, state, control, **kw):
            if (d / "STOP").exists() and not self.stopped:
                self.stopped = True
                control.should_training_stop = True
                control.should_save = True
            now = time.time()
            if now - self.last_status > 1.0 or self.stopped:
                self.last_status = now
                update_status(d, step=state.global_step, total_steps=state.max_steps, epoch=state.epoch,
                              eta_s=self._eta(state), elapsed_s=round(now - self.t0, 2),
                              state="stopping" if self.stopped else "running")

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            now = time.time()
            tokens = state.num_input_tokens_seen or 0
            t_prev, time_prev = self.last_tokens
            tps = (tokens - t_prev) / (now - time_prev) if now > time_prev and tokens > t_prev else None
            self.last_tokens = (tokens, now)
            ev = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4),
                  "loss": logs.get("loss"), "eval_loss": logs.get("eval_loss"),
                  "learning_rate": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm"),
                  "tokens_per_s": round(tps, 1) if tps else None, "elapsed_s": round(now - self.t0, 3),
                  "mean_token_accuracy": logs.get("mean_token_accuracy", logs.get("eval_mean_token_accuracy"))}
            if "train_loss" in logs:
                return  # the closing summary is not a step
            append_event(d, ev)
            fields = {"step": state.global_step, "eta_s": self._eta(state)}
            if ev["loss"] is not None:
                fields["loss"] = ev["loss"]
            if ev["eval_loss"] is not None:
                fields["eval_loss"] = ev["eval_loss"]
            if tps:
                fields["tokens_per_s"] = round(tps, 1)
            update_status(d, **fields)
            for key in ("loss", "grad_norm", "eval_loss"):
                v = logs.get(key)
                if v is not None and not math.isfinite(float(v)):
                    self.nonfinite = f"{key} became {v} at step {state.global_step}"
                    control.should_training_stop = True
                    control.should_save = False

    return StudioCallback()


def load_data(cfg: RunConfig, tokenizer):
    from datasets import Dataset

    from .data import load_prepared
    from .tokenize import tokenize_rows

    train_rows, val_rows, kind = load_prepared(cfg.data.source, val_ratio=cfg.data.val_ratio, seed=cfg.data.seed)
    if cfg.train.method == "dpo":
        if kind != "preference":
            raise ValueError(f"data.source: DPO needs preference rows (prompt/chosen/rejected), this dataset is {kind!r}")
        return Dataset.from_list(train_rows), (Dataset.from_list(val_rows) if val_rows else None), {"kind": kind}
    if kind not in ("messages", "prompt_completion", "text"):
        raise ValueError(f"data.source: {kind!r} rows are for DPO/KTO, not supervised fine-tuning; choose method dpo")
    train, summary = tokenize_rows(tokenizer, train_rows, kind, cfg.data.max_seq_len)
    if not train or summary["trained_tokens"] == 0:
        raise ValueError("data.source: no token would be trained (every label is masked); check the chat "
                         "template and that rows end with an assistant answer")
    val, _ = tokenize_rows(tokenizer, val_rows, kind, cfg.data.max_seq_len) if val_rows else ([], None)
    summary["kind"] = kind
    return Dataset.from_list(train), (Dataset.from_list(val) if val else None), summary


def build_model(cfg: RunConfig):
    """(model, tokenizer, peft_config or None, backend name)."""
    from .modeling import cuda_available, load_model, load_tokenizer, unsloth_available

    method = cfg.train.method
    if unsloth_available() and method in ("lora", "qlora", "dora"):
        import unsloth  # noqa: F401  -- must come before transformers/peft are used
        from unsloth import FastLanguageModel

        from .builtin import resolve_model

        model, tok = FastLanguageModel.from_pretrained(
            resolve_model(cfg.model.model_id), max_seq_length=cfg.data.max_seq_len,
            load_in_4bit=(method == "qlora"), dtype=None)
        mods = cfg.lora.modules()
        if mods == "all-linear":
            mods = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        model = FastLanguageModel.get_peft_model(
            model, r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
            target_modules=mods, use_dora=(method == "dora"), use_gradient_checkpointing="unsloth"
            if cfg.train.gradient_checkpointing else False, random_state=cfg.train.seed)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return model, tok, None, "unsloth"
    if method == "qlora" and not cuda_available():
        raise ValueError("train.method: QLoRA loads the base in 4-bit with bitsandbytes and needs a CUDA GPU; "
                         "choose lora on this machine")
    tok = load_tokenizer(cfg.model.model_id, trust_remote_code=cfg.model.trust_remote_code)
    model = load_model(cfg.model.model_id, load_in_4bit=(method == "qlora"),
                       trust_remote_code=cfg.model.trust_remote_code)
    if method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
    return model, tok, to_peft_config(cfg), "transformers"


def _save_artifact(trainer, tokenizer, d: Path, method: str, kept_from: Path | None = None) -> Path:
    """Save the adapter (or full model) into a temp folder, then move it into place. With kept_from
    (the best evaluation's saved weights, finetune.monitor), those become the artifact instead."""
    name = "model" if method == "full" else "adapter"
    tmp = d / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if kept_from is not None:
        shutil.copytree(kept_from, tmp)
    else:
        trainer.model.save_pretrained(tmp)
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
    lines += ["", "## Results", "", f"- final training loss: {status.get('loss')}",
              f"- final validation loss: {status.get('final_eval_loss', status.get('eval_loss'))}",
              f"- steps: {status.get('step')}", f"- {kept_sentence(status)}",
              *([f"- stopped early: {status.get('early_stop_reason')}"] if status.get("early_stopped") else []),
              f"- duration: {status.get('duration_s')} s", ""]
    if cfg.model.model_id.startswith("builtin:"):
        lines += ["The base is Fine-Tune Studio's randomly initialised demo model; this adapter only demonstrates the pipeline.", ""]
    atomic_write_text(d / "README.md", "\n".join(lines))


def train_run(run_path: str | os.PathLike, resume: bool = False) -> int:
    d = Path(run_path).resolve()
    cfg = RunConfig.from_dict(read_json(d / "config.json"))
    t_start = time.time()
    update_status(d, state="running", pid=os.getpid(), started=now_iso(), error=None)
    signal.signal(signal.SIGTERM, lambda *_: (d / "STOP").write_text("SIGTERM"))
    try:
        from .modeling import set_threads

        set_threads()
        model, tok, peft_config, backend = build_model(cfg)
        train_ds, eval_ds, summary = load_data(cfg, tok)
        update_status(d, backend=backend, data_summary=summary)
        cuda = next(model.parameters()).is_cuda
        import torch

        bf16 = cuda and torch.cuda.is_bf16_supported()
        cb = _make_callback(d)
        from .monitor import make_monitor

        best = make_monitor(d, keep_best=cfg.train.keep_best, patience=cfg.train.early_stopping_patience,
                            threshold=cfg.train.early_stopping_threshold)
        from transformers import set_seed

        set_seed(cfg.train.seed)  # adapter init draws from the global RNG: make runs reproducible
        common = dict(model=model, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tok,
                      callbacks=[cb, best], peft_config=peft_config)
        if cfg.train.method == "dpo":
            from trl import DPOTrainer

            trainer = DPOTrainer(args=to_dpo_config(cfg, str(d / "checkpoints"), cuda=cuda, bf16=bf16,
                                                    has_eval=eval_ds is not None), **common)
        else:
            from trl import SFTTrainer

            trainer = SFTTrainer(args=to_sft_config(cfg, str(d / "checkpoints"), cuda=cuda, bf16=bf16,
                                                    has_eval=eval_ds is not None), **common)
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in trainer.model.parameters())
        update_status(d, trainable_params=trainable, total_params=total)
        ckpt = last_checkpoint(d) if resume else None
        if resume and ckpt is None:
            raise ValueError("no complete checkpoint to resume from")
        result = trainer.train(resume_from_checkpoint=ckpt)
        if cb.nonfinite:
            update_status(d, state="failed", error=f"Training stopped: {cb.nonfinite}. The last good checkpoint is kept; "
                          "lower the learning rate and resume or start again.", resumable=last_checkpoint(d) is not None)
            return 1
        final_eval = None
        if eval_ds is not None and not cb.stopped:
            final_eval = trainer.evaluate().get("eval_loss")
            if final_eval is not None:
                append_event(d, {"step": trainer.state.global_step, "epoch": round(trainer.state.epoch or 0, 4),
                                 "loss": None, "eval_loss": final_eval, "learning_rate": None, "grad_norm": None,
                                 "tokens_per_s": None, "elapsed_s": round(time.time() - cb.t0, 3)})
        last_step = trainer.state.global_step
        kept_from = best.choose_artifact(last_step, last_evaluated=final_eval is not None)
        _save_artifact(trainer, tok, d, cfg.train.method, kept_from)
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
            resumable=state == "stopped" and last_checkpoint(d) is not None)
        try:
            write_model_card(d, cfg, st)
        except Exception as exc:  # the adapter is saved; a card problem must not fail the run
            sys.stderr.write(f"model card not written: {redact(str(exc))}\n")
        return 0
    except BaseException as exc:  # noqa: BLE001 -- every failure must land in status.json
        msg = friendly_error(exc)
        sys.stderr.write(redact(traceback.format_exc()))
        update_status(d, state="failed", error=msg, resumable=last_checkpoint(d) is not None,
                      duration_s=round(time.time() - t_start, 2))
        return 1
    finally:
        (d / "STOP").unlink(missing_ok=True)
        shutil.rmtree(d / ".adapter.tmp", ignore_errors=True)
        shutil.rmtree(d / ".model.tmp", ignore_errors=True)
