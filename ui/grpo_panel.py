"""The Train tab's GRPO settings: the reward picker (checkboxes, weights, regex, JSON schema, length
bounds), answers per prompt, answer length, temperature and KL; shown only when the method is grpo.

`build()` returns the components in API order (PARAMS: the `train` API's last parameters);
`settings(...)` turns their values into the run config's `grpo` section; `reward_plot()` and
`wire_curve()` add the live chart of mean reward, reward per function and KL under the loss chart. A reward file (the owner's
Python code) is offered only on a local app: on a public one the engine refuses it anyway.
"""

from __future__ import annotations

import gradio as gr

import pandas as pd

from finetune.config import GrpoConfig
from finetune.rewards import REWARD_HELP, REWARDS

from .forms import coerce, field_input

# The grpo fields the train API takes, in order (appended after its other parameters).
FIELDS = ("reward", "reward_weights", "format_regex", "json_schema", "length_min_chars", "length_max_chars",
          "num_generations", "max_completion_len", "temperature", "beta", "reward_file")
PARAMS = tuple(f"grpo_{f}" for f in FIELDS)


def settings(values: dict) -> dict:
    """The grpo section from the train API's grpo_* values (the picker's list becomes "a,b")."""
    out = {}
    for f in FIELDS:
        v = values.get(f"grpo_{f}")
        if f == "reward" and isinstance(v, (list, tuple)):
            picked = [str(x).strip().lower() for x in v]
            v = ",".join([r for r in REWARDS if r in picked] + [r for r in picked if r not in REWARDS])
        out[f] = coerce(GrpoConfig, f, v if v is not None else getattr(GrpoConfig(), f))
    return out


# The reward chart's series, all present from its first draw (Gradio 6.31 fixes a plot's colour domain
# from the first value it draws; a reward-file function's series shows uncoloured).
SERIES = ("mean reward", "KL") + tuple(f"reward: {r}" for r in REWARDS)
COLORS = dict(zip(SERIES, ("#54a24b", "#b279a2", "#e45756", "#72b7b2", "#eeca3b", "#ff9da6", "#9d755d")))


def reward_frame(events: list[dict]) -> pd.DataFrame:
    """Mean reward, KL and each reward function's mean per logged step (GRPO events only)."""
    rows = []
    for e in events:
        if e.get("reward") is None:
            continue
        rows.append({"step": e["step"], "value": e["reward"], "series": "mean reward"})
        if e.get("kl") is not None:
            rows.append({"step": e["step"], "value": e["kl"], "series": "KL"})
        rows += [{"step": e["step"], "value": v, "series": f"reward: {k}"}
                 for k, v in (e.get("rewards") or {}).items() if v is not None]
    first = rows[0]["step"] if rows else 0
    rows += [{"step": first, "value": None, "series": s} for s in SERIES if not any(r["series"] == s for r in rows)]
    return pd.DataFrame(rows).astype({"step": "int64", "value": "float64"})


def reward_curve(run_id: str | None, shown: dict | None = None):
    """The reward chart for the followed run: shown only when its events carry rewards (GRPO).
    The events are those the live view's follower has read (without reading on: the live view's own
    tick does, and decides from what changed), and the chart is re-sent only when the run, its number
    of events or its event log's generation (a resume rewrites it) changed (`shown`, per page)."""
    from finetune.live import events_seen

    run_id = (run_id or "").strip()
    try:
        events, gen = events_seen(run_id) if run_id else ([], 0)
    except (ValueError, OSError):
        events, gen = [], 0
    seen = {"run": run_id, "n": len(events), "generation": gen}
    if isinstance(shown, dict) and shown == seen:
        return gr.skip(), shown
    if not any(e.get("reward") is not None for e in events):
        return gr.LinePlot(visible=False), seen
    return gr.LinePlot(reward_frame(events), visible=True), seen


def reward_plot():
    return gr.LinePlot(reward_frame([]), x="step", y="value", color="series", label="GRPO rewards and KL",
                       x_title="step", y_title="reward", color_title="", x_axis_format="d", color_map=COLORS,
                       visible=False, elem_id="reward-plot")


def wire_curve(timer, run_id, plot) -> None:
    """Redraw the reward chart with the live view (each timer tick and when the run changes)."""
    shown = gr.State(None)
    for event in (timer.tick, run_id.change):
        event(reward_curve, [run_id, shown], [plot, shown], api_visibility="private", show_progress="hidden")


def build(method_box) -> list:
    from finetune.caller import public_mode

    d = GrpoConfig()
    with gr.Group(visible=False, elem_id="train-grpo") as box:
        gr.Markdown("**GRPO rewards**: each sampled answer is scored by the ticked checks (weighted sum); "
                    "exact and numeric compare with the data's reference answer (`answer`, `solution`, ...).")
        reward = gr.CheckboxGroup(list(REWARDS), value=d.reward.split(","), label="Reward functions",
                                  info="; ".join(f"{k}: {v}" for k, v in REWARD_HELP.items()), elem_id="grpo-rewards")
        with gr.Row():
            weights = gr.Textbox(d.reward_weights, label="Weights", placeholder="e.g. 1, 0.5 (empty = all 1)",
                                 info="One per ticked function, in the order listed above (reward-file ones last).")
            regex = field_input(GrpoConfig, "format_regex", d.format_regex, label="Format regex")
        schema = field_input(GrpoConfig, "json_schema", d.json_schema, label="JSON schema", lines=2,
                             placeholder='{"type": "object", "required": ["answer"]}')
        with gr.Row():
            lo = field_input(GrpoConfig, "length_min_chars", d.length_min_chars, label="Length: min chars")
            hi = field_input(GrpoConfig, "length_max_chars", d.length_max_chars, label="Length: max chars")
        with gr.Row():
            gens = field_input(GrpoConfig, "num_generations", d.num_generations, label="Answers per prompt")
            clen = field_input(GrpoConfig, "max_completion_len", d.max_completion_len,
                               label="Max answer length (tokens)")
            temp = field_input(GrpoConfig, "temperature", d.temperature, label="Temperature", step=0.1)
            beta = field_input(GrpoConfig, "beta", d.beta, label="KL beta", step=0.01)
        rfile = field_input(GrpoConfig, "reward_file", d.reward_file, label="Reward file (.py, local app only)",
                            visible=not public_mode())
    method_box.change(lambda m: gr.Group(visible=m == "grpo"), method_box, box, api_visibility="private",
                      show_progress="hidden")
    return [reward, weights, regex, schema, lo, hi, gens, clen, temp, beta, rfile]
