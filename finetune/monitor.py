"""Training-side monitor that the training child adds to its Trainer: keep the best adapter, stop early.

Best adapter: at every evaluation with a lower validation loss than before, the adapter (or the full
model) is saved to `checkpoints/best/` (atomically), and status.json says `best_step` and
`best_eval_loss`. When the run ends, `choose_artifact` says whether that one, not the last step's,
becomes the run's `adapter/` (`kept_step` in the status). This works at every evaluation, not only
at save steps, so it does not fight `save_total_limit` or the resumable checkpoints.
Early stopping: `train.early_stopping_patience` evaluations in a row without a better validation
loss (by more than `train.early_stopping_threshold`) end the run as completed, `early_stopped`.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from .paths import read_json
from .runs import update_status as _update_status

BEST_DIR = "best"  # under checkpoints/: not "checkpoint-N", so Trainer's rotation and resume ignore it


def kept_sentence(status: dict) -> str:
    """Which step's weights the adapter holds, in words (the status, the card and the report say it)."""
    kept, last, best = status.get("kept_step"), status.get("step"), status.get("best_eval_loss")
    if kept is None:
        return f"weights from the last step ({last})"
    if kept != last:
        return (f"weights kept from step {kept}, the lowest validation loss ({best:.4f}); the last step was {last}"
                if best is not None else f"weights kept from step {kept}; the last step was {last}")
    why = f" (also the lowest validation loss, {best:.4f})" if best is not None and status.get("best_step") == kept else ""
    return f"weights from the last step ({last}){why}"


def make_monitor(d: Path, keep_best: bool = True, patience: int = 0, threshold: float = 0.0, writer: bool = True):
    """writer: only one rank of a several-process run writes files; every rank takes the same
    decisions (validation loss is gathered, so all ranks see the same value)."""
    from transformers import TrainerCallback

    def update_status(d, **kw):
        if writer:
            _update_status(d, **kw)

    class BestAndEarlyStop(TrainerCallback):
        def __init__(self):
            self.best_loss: float | None = None
            self.best_step: int | None = None
            self.bad_evals = 0
            self.early_stopped = False

        @property
        def best_dir(self) -> Path:
            return d / "checkpoints" / BEST_DIR

        def on_train_begin(self, args, state, control, **kw):
            st = read_json(d / "status.json", default={}) or {}
            step, loss = st.get("best_step"), st.get("best_eval_loss")
            # On resume: keep the earlier best only if it lies on the path we resume from.
            if step is not None and loss is not None and step <= state.global_step and (
                    not keep_best or self.best_dir.is_dir()):
                self.best_step, self.best_loss = int(step), float(loss)
            else:
                if writer:
                    shutil.rmtree(self.best_dir, ignore_errors=True)
                update_status(d, best_step=None, best_eval_loss=None, kept_step=None, early_stopped=False)

        def on_evaluate(self, args, state, control, metrics=None, model=None, **kw):
            loss = (metrics or {}).get("eval_loss")
            if loss is None or not math.isfinite(float(loss)):
                return
            loss = float(loss)
            if self.best_loss is None or loss < self.best_loss - threshold:
                self.best_loss, self.best_step, self.bad_evals = loss, state.global_step, 0
                if keep_best and writer and model is not None:
                    self._save(model)
                update_status(d, best_step=self.best_step, best_eval_loss=round(loss, 6))
                return
            self.bad_evals += 1
            if patience and self.bad_evals >= patience and not self.early_stopped:
                self.early_stopped = True
                control.should_training_stop = True
                update_status(d, early_stopped=True, early_stop_reason=(
                    f"validation loss did not improve for {self.bad_evals} evaluations after step {self.best_step} "
                    f"(best {self.best_loss:.4f}); stopped at step {state.global_step}"))

        def _save(self, model):
            tmp = self.best_dir.with_name(".best.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            if "ref" in (getattr(model, "peft_config", None) or {}):  # DPO/KTO on a run's adapter: not the frozen ref
                model.save_pretrained(tmp, selected_adapters=["default"])
            else:
                model.save_pretrained(tmp)
            shutil.rmtree(self.best_dir, ignore_errors=True)
            os.replace(tmp, self.best_dir)

        def choose_artifact(self, last_step: int, last_evaluated: bool) -> Path | None:
            """The best folder when it should be the run's artifact: only when the last step was
            evaluated too (so we know the best really beats it) and the best is an earlier step."""
            if (keep_best and last_evaluated and self.best_step is not None and self.best_step < last_step
                    and self.best_dir.is_dir()):
                return self.best_dir
            return None

    return BestAndEarlyStop()
