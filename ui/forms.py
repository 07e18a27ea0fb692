"""Form fields generated from the config dataclasses: label, help text, widget and type come from the
field itself (finetune.config), so the Train tab shows every setting the run uses with one source of truth.

`field_input(cls, name)` builds the widget; `coerce(cls, name, value)` turns what the browser sent
back into the field's type, with a gr.Error naming the setting when it cannot.
"""

from __future__ import annotations

import dataclasses
import math
import typing

import gradio as gr

from finetune.config import help_for

# Common learning rates, from full fine-tuning (1e-5) to a random demo model (2e-3); any other is typed.
LEARNING_RATES = ["1e-5", "2e-5", "5e-5", "1e-4", "2e-4", "3e-4", "5e-4", "1e-3", "2e-3", "5e-3"]
LABELS = {"lr_scheduler": "Learning-rate schedule", "grad_accum": "Gradient accumulation steps",
          "max_seq_len": "Max sequence length (tokens)", "r": "LoRA rank", "alpha": "LoRA alpha",
          "dropout": "LoRA dropout", "target_modules": "Target modules", "val_ratio": "Validation share",
          "num_virtual_tokens": "Virtual tokens (prefix tuning)", "dpo_beta": "DPO beta",
          "keep_best": "Keep the best checkpoint (lowest validation loss)"}


def _field(cls, name: str) -> tuple[typing.Any, typing.Any]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == name:
            return hints[name], f.default
    raise KeyError(name)


def label(name: str) -> str:
    return LABELS.get(name) or name.replace("_", " ").capitalize()


def fmt_lr(v) -> str:
    """A learning rate as the dropdown shows it: one of the common values when it is one."""
    v = float(v)
    return next((c for c in LEARNING_RATES if math.isclose(float(c), v)), f"{v:g}")


def field_input(cls, name: str, value=None, **kw):
    """A widget for one dataclass field: Checkbox for bool, Dropdown for Literal, Number otherwise."""
    typ, default = _field(cls, name)
    value = default if value is None else value
    common = dict(label=kw.pop("label", label(name)), info=kw.pop("info", help_for(cls, name)))
    if name == "learning_rate":  # steps of 1 are useless here: common values, or type your own
        return gr.Dropdown(LEARNING_RATES, value=fmt_lr(value), allow_custom_value=True, **common, **kw)
    if typ is bool:
        return gr.Checkbox(value=bool(value), **common, **kw)
    if typing.get_origin(typ) is typing.Literal:
        return gr.Dropdown(list(typing.get_args(typ)), value=value, **common, **kw)
    if typ is int:
        return gr.Number(value=value, precision=0, step=1, **common, **kw)
    if typ is float:
        step = kw.pop("step", 0.01 if isinstance(value, float) and 0 < value < 1 else 1)
        return gr.Number(value=value, step=step, **common, **kw)
    return gr.Textbox(value=value, **common, **kw)


def coerce(cls, name: str, value):
    """The browser's value as the field's type; gr.Error naming the setting when it is not one."""
    typ, _ = _field(cls, name)
    what = label(name)
    if typ is bool:
        return bool(value)
    if typ is str or typing.get_origin(typ) is typing.Literal:
        return str(value or "").strip()
    if value is None or (isinstance(value, str) and not value.strip()):
        raise gr.Error(f"{what} is empty: enter a number.")
    try:
        num = float(str(value).strip())
    except ValueError:
        raise gr.Error(f"{what}: {value!r} is not a number.") from None
    if not math.isfinite(num):
        raise gr.Error(f"{what}: {value!r} is not a finite number.")
    if typ is int:
        if num != int(num):
            raise gr.Error(f"{what} must be a whole number, got {value}.")
        return int(num)
    return num
