"""A run that is one trial of a hyperparameter search: where its study lives, and the pruning callback.

A study lives in FINETUNE_HOME/studies/<study_id>/: study.json (what finetune.sweep writes: settings,
search space, trials, best) and optuna.journal (Optuna's JournalStorage, a file every process of the
study may read and append to under a lock). A trial's run folder holds trial.json ({study_id,
number}); the training child (finetune/train.py) asks `trial_callbacks` for its callbacks.

Pruning happens inside the training child, at each evaluation: the callback reports the validation
loss to the Optuna trial (the same journal the search driver reads) and asks the study's pruner; when
told to prune, it ends training the way a STOP does (checkpoint and adapter saved, state `stopped`)
and writes `pruned`, `pruned_at_step` and `prune_reason` into status.json. The driver then tells
Optuna the trial was pruned. No second process has to notice in time: the decision is taken where
the loss is computed, before the next step.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from .paths import home, is_safe_name, read_json
from .runs import update_status

TRIAL_FILE = "trial.json"
STORAGE_FILE = "optuna.journal"


class StudyError(ValueError):
    pass


def studies_dir() -> Path:
    d = home() / "studies"
    d.mkdir(parents=True, exist_ok=True)
    return d


def study_dir(study_id: str, must_exist: bool = True) -> Path:
    if not is_safe_name(study_id, 128):
        raise StudyError(f"invalid study id {study_id!r}")
    d = studies_dir() / study_id
    if must_exist and not (d / "study.json").exists():
        raise StudyError(f"no study {study_id!r} (`finetune sweep --list` lists them)")
    return d


def storage(d: Path):
    """The study's Optuna storage: a journal file (file-locked appends; every process replays it)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    path = str(d / STORAGE_FILE)
    return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))


def make_pruner(settings: dict):
    """Optuna's MedianPruner from the study's pruner settings (the driver and the child build the same)."""
    import optuna

    if settings.get("kind") == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=int(settings.get("n_startup_trials", 2)),
                                       n_warmup_steps=int(settings.get("n_warmup_steps", 0)),
                                       interval_steps=1, n_min_trials=1)


def load_optuna_study(d: Path, sampler=None):
    import optuna

    doc = read_json(d / "study.json", default={}) or {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=doc["study_id"], storage=storage(d), sampler=sampler,
                             pruner=make_pruner(doc.get("pruner") or {}))


def trial_callbacks(run_dir: Path, studio_cb) -> list:
    """[] for a normal run; for a trial, the callback that reports validation loss and prunes.
    studio_cb is train.py's own callback: a pruned run ends through its `stopped` path."""
    info = read_json(run_dir / TRIAL_FILE, default=None)
    if not isinstance(info, dict) or not info.get("study_id"):
        return []
    from transformers import TrainerCallback

    try:
        d = study_dir(str(info["study_id"]))
    except (ValueError, OSError):  # the study was deleted since: the run trains on as a normal run
        return []
    number = int(info["number"])

    class PruneOnValidationLoss(TrainerCallback):
        def __init__(self):
            self.trial = None

        def _trial(self):
            if self.trial is None:
                import optuna

                study = load_optuna_study(d)
                frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
                self.trial = optuna.trial.Trial(study, frozen._trial_id)
            return self.trial

        def on_evaluate(self, args, state, control, metrics=None, **kw):
            loss = (metrics or {}).get("eval_loss")
            if loss is None or not math.isfinite(float(loss)) or studio_cb.stopped:
                return  # a non-finite loss is the trainer guard's to end
            if state.max_steps and state.global_step >= state.max_steps:
                return  # the evaluation after the last step: nothing left to save by pruning
            import optuna

            try:
                trial, step = self._trial(), int(state.global_step)
                mine = [t for t in trial.study.get_trials(deepcopy=False) if t.number == number]
                if not mine or mine[0].state != optuna.trial.TrialState.RUNNING:
                    return  # a pruned or stopped trial resumed by hand: Optuna has closed it, train on
                if step in mine[0].intermediate_values:
                    return  # reported before a resume
                trial.report(float(loss), step)
            except Exception as exc:  # noqa: BLE001 -- the study's storage is the search's business, not the run's
                sys.stderr.write(f"search trial: not reported ({type(exc).__name__}: {exc})\n")
                return
            if not trial.should_prune():
                return
            studio_cb.stopped = True  # train.py then saves and ends the run as `stopped`
            control.should_training_stop = True
            control.should_save = True
            update_status(run_dir, pruned=True, pruned_at_step=step,
                          prune_reason=f"validation loss {float(loss):.4f} at step {step} is worse than the median "
                                       f"of the finished trials at that step (Optuna MedianPruner)")

    return [PruneOnValidationLoss()]
