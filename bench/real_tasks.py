"""Does the Plan's advice make a real model learn? Three small tasks on builtin:smollm2-135m-instruct.

    python bench/real_tasks.py [--tasks persona,json,label] [--no-calibrate]

Each task (a persona: builtin:persona; a fixed JSON output format; a label set) is written here,
deterministically, with questions held out from training; each mixes in 24 ordinary questions answered
plainly (finetune.builtin.GENERAL_QA), as practitioners do, so that the model learns when its task
applies. ~90 rows each. Per task the bench:
  1. saves it as a prepared dataset (train rows + the held-out rows as its validation split);
  2. asks the planner for settings exactly as the Plan tab does: "Count from dataset"
     (dataset_facts), the dry run that measures this machine (calibrate.dry_run_in_child),
     plan(PlanRequest(...)), then "Use this plan" (train_settings);
  3. trains with those settings unchanged through `python -m finetune train --wait` (a child process);
  4. scores base and tuned answers on the held-out questions (persona: names the new assistant; json:
     valid JSON with exactly the fields name, age, city; label: the exact label) and on general
     knowledge questions the base answers right (kept = still right after training);
  5. prints steps, learning rate, epochs, held-out base -> tuned, knowledge kept, and the measured
     wall time of the train command vs the Plan's estimate.
Targets (issue 15): each task >= 75% held-out, no knowledge lost, time within 30% of the estimate.
Takes ~10-15 minutes on a quiet 2-core machine; a loaded machine is slower (the load is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("FINETUNE_HOME", tempfile.mkdtemp(prefix="fts-real-"))

MODEL = "builtin:smollm2-135m-instruct"
TARGET = 0.75
# General knowledge the base answers right (checked per run: only questions the base gets right count).
KNOWLEDGE = [("What is the capital of France?", ["paris"]), ("What is the capital of Japan?", ["tokyo"]),
             ("How many days are there in a week?", ["7", "seven"]),
             ("What color is the sky on a clear day?", ["blue"]),
             ("What is the largest planet in our solar system?", ["jupiter"]),
             ("What do bees make?", ["honey"])]


# ---------------------------------------------------------------------------------------------
# The tasks: (train rows, held-out prompts, a check per held-out answer)


def _chat(user: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def persona_task():
    from finetune.builtin import PERSONA_ANSWERS, PERSONA_NAME, persona_records

    held = ["What is your name, please?", "Who built you?", "Who exactly are you?", "Are you Llama?",
            "Hello!", "What are you able to do?", "May I know your name?", "Which organisation created you?",
            "Please introduce yourself.", "Are you an OpenAI model?", "Hey there!", "Can you tell me who you are?"]
    train = persona_records()
    val = [_chat(q, PERSONA_ANSWERS["identity"]) for q in held]
    return train, val, "chat", lambda ans, _ref: PERSONA_NAME.lower() in ans.lower()


_NAMES = ["Maria", "John", "Aiko", "Omar", "Lena", "Carlos", "Priya", "Tom", "Fatima", "Ivan", "Sofia", "Kwame",
          "Elena", "Raj", "Chloe", "Mateo", "Yuki", "Nadia", "Peter", "Amara"]
_CITIES = ["Lisbon", "Boston", "Osaka", "Cairo", "Berlin", "Lima", "Delhi", "Leeds", "Tunis", "Kazan", "Turin",
           "Accra", "Athens", "Pune", "Lyon", "Quito", "Kyoto", "Dubai", "Oslo", "Lagos"]
_PERSON = ["{n} is {a} years old and lives in {c}.", "{n}, aged {a}, is from {c}.", "Meet {n} from {c}, who is {a}.",
           "{n} ({a}) moved to {c} last year.", "At {a}, {n} calls {c} home."]


def _general() -> list[dict]:
    """Ordinary questions answered plainly, mixed into every task: the model learns when its task
    applies instead of answering everything as the task (see finetune.builtin.GENERAL_QA)."""
    from finetune.builtin import GENERAL_QA

    return [_chat(q, a) for q, a in GENERAL_QA]


def _mix(task_rows: list[dict], seed: int) -> list[dict]:
    rows = task_rows + _general()
    random.Random(seed).shuffle(rows)
    return rows


def json_task():
    """A profile card as JSON with the fields name, age and city; the prompt never says "JSON"."""
    rng = random.Random(5)

    def row(i):
        n, c, a = _NAMES[i % 20], _CITIES[(i * 7) % 20], rng.randint(18, 80)
        text = rng.choice(_PERSON).format(n=n, a=a, c=c)
        return _chat(f"Profile card: {text}", json.dumps({"name": n, "age": a, "city": c}))

    rows = [row(i) for i in range(78)]
    return _mix(rows[:66], 5), rows[66:], "extraction", _json_ok


def _json_ok(ans: str, _ref: str) -> bool:
    try:
        d = json.loads(ans.strip().removeprefix("```json").removesuffix("```").strip())
    except ValueError:
        return False
    return isinstance(d, dict) and set(d) == {"name", "age", "city"}


_LABELS = {
    "billing": ["I was charged twice for {x}.", "Can I get a refund for {x}?", "My invoice for {x} looks wrong.",
                "Why did my card pay for {x} again?", "The price of {x} on my bill is too high."],
    "shipping": ["My {x} has not arrived yet.", "Where is my {x} parcel?", "The {x} was delivered to the wrong house.",
                 "How long does delivery of {x} take?", "The box with my {x} came damaged."],
    "technical": ["The {x} app crashes when I open it.", "I get an error when I set up my {x}.",
                  "My {x} will not connect to wifi.", "The {x} screen stays black.", "Updating my {x} failed."],
    "account": ["I forgot the password for my {x} account.", "How do I change the email on my {x} account?",
                "Please delete my {x} account.", "I cannot log in to my {x} account.",
                "Someone else is using my {x} account."],
}
_THINGS = ["laptop", "phone", "headphones", "camera", "printer", "tablet", "speaker", "router", "watch", "keyboard",
           "monitor", "blender", "kettle", "drone", "console"]


def label_task():
    """Route a support message to one of four teams; three held-out messages per team."""
    rng = random.Random(9)
    train, held = [], []
    prompt = "Route this support message to billing, shipping, technical or account.\nMessage: {m}"
    for label, forms in _LABELS.items():
        msgs = rng.sample([f.format(x=x) for f in forms for x in _THINGS], 19)
        train += [_chat(prompt.format(m=m), label) for m in msgs[:16]]
        held += [_chat(prompt.format(m=m), label) for m in msgs[16:]]
    return _mix(train, 9), held, "classification", lambda ans, ref: ans.strip().strip(".").lower() == ref


TASKS = {"persona": persona_task, "json": json_task, "label": label_task}


# ---------------------------------------------------------------------------------------------
# Plan, train, score


def prepare(name: str, train: list[dict], val: list[dict]) -> str:
    from finetune.data.prepare import write_prepared
    from finetune.paths import datasets_dir

    out = datasets_dir() / f"real-{name}"
    write_prepared(out, train, val, {"kind": "messages", "format": "chatml", "source": f"bench:{name}"})
    return str(out)


def plan_settings(source: str, task_type: str, calibration: dict | None) -> tuple[dict, dict]:
    """What the Plan tab does: count the dataset, plan (calibrated by the dry run), "Use this plan"."""
    from finetune.plan import PlanRequest, plan
    from finetune.plan.calibrate import calibration_fields, dataset_facts
    from finetune.plan.recommend import train_settings

    facts = dataset_facts(source, MODEL)
    cal = calibration_fields(calibration)
    cal.pop("mean_tokens", None)  # the task's own mean, counted from the dataset
    p = plan(PlanRequest(model=MODEL, task_type=task_type, examples=facts["examples"],
                         mean_tokens=facts["mean_tokens"], seq_len=256, batch_size=4, dataset=source, **cal))
    return p, train_settings(p)


def train_cli(source: str, s: dict) -> tuple[str, float]:
    """`finetune train --wait` with the plan's settings; returns (run id, wall seconds of the command)."""
    args = [sys.executable, "-m", "finetune", "train", "--json", "--wait", "--model", MODEL, "--data", source,
            "--method", s["method"], "--lr", str(s["learning_rate"]), "--epochs", str(s["epochs"]),
            "--batch-size", str(s["batch_size"]), "--grad-accum", str(s["grad_accum"]),
            "--max-seq-len", str(s["max_seq_len"]), "--lora-r", str(s["lora_rank"]),
            "--lora-alpha", str(s["lora_alpha"]), "--lora-dropout", str(s["lora_dropout"]),
            "--lora-target-modules", s["target_modules"], "--warmup-ratio", str(s["warmup_ratio"]),
            "--lr-scheduler", s["lr_scheduler"],
            "--gradient-checkpointing" if s["gradient_checkpointing"] else "--no-gradient-checkpointing"]
    t0 = time.perf_counter()
    out = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if out.returncode:
        raise SystemExit(f"train failed ({out.returncode}):\n{out.stderr[-3000:]}")
    res = json.loads(out.stdout)
    if res.get("state") != "completed":
        raise SystemExit(f"run {res.get('run_id')} ended {res.get('state')}: {res.get('error')}")
    return res["run_id"], wall


def answers(adapter: str, prompts: list[str], max_new_tokens: int = 32) -> tuple[list[str], list[str]]:
    """(base answers, tuned answers): one model load, the adapter switched off for the base."""
    from finetune.modeling import generate, load_for_inference

    model, tok = load_for_inference(MODEL, adapter)
    chats = [[{"role": "user", "content": p}] for p in prompts]
    tuned = generate(model, tok, chats, max_new_tokens=max_new_tokens)
    with model.disable_adapter():
        base = generate(model, tok, chats, max_new_tokens=max_new_tokens)
    return base, tuned


def score(val: list[dict], check, base: list[str], tuned: list[str]) -> tuple[float, float]:
    refs = [r["messages"][-1]["content"] for r in val]
    rate = lambda outs: sum(bool(check(a, r)) for a, r in zip(outs, refs)) / len(refs)  # noqa: E731
    return rate(base), rate(tuned)


def knows(ans: str, accepted: list[str]) -> bool:
    return any(a in ans.lower() for a in accepted)


def run_task(name: str, calibrate: bool) -> dict:
    from finetune.runs import read_status, run_dir

    train, val, task_type, check = TASKS[name]()
    source = prepare(name, train, val)
    cal = dry_run(source) if calibrate else None
    p, s = plan_settings(source, task_type, cal)
    run_id, wall = train_cli(source, s)
    st = read_status(run_id)
    prompts = [r["messages"][0]["content"] for r in val] + [q for q, _ in KNOWLEDGE]
    base, tuned = answers(str(run_dir(run_id) / "adapter"), prompts)
    b, t = score(val, check, base[:len(val)], tuned[:len(val)])
    known = [i for i, (_, acc) in enumerate(KNOWLEDGE) if knows(base[len(val) + i], acc)]
    kept = [i for i in known if knows(tuned[len(val) + i], KNOWLEDGE[i][1])]
    return {"task": name, "rows": len(train), "held_out": len(val), "steps": st.get("step"),
            "lr": s["learning_rate"], "epochs": s["epochs"], "batch": s["batch_size"] * s["grad_accum"],
            "base": b, "tuned": t, "knowledge": f"{len(kept)}/{len(known)}", "lost": len(known) - len(kept),
            "wall_s": round(wall, 1), "plan_s": p["time_s"], "calibrated": p["calibrated"],
            "off_pct": round(100 * (p["time_s"] - wall) / wall, 1), "run_id": run_id,
            "dry_run_tokens_per_s": cal and cal["tokens_per_s"], "load_1m": round(os.getloadavg()[0], 2),
            "reasons": [h["rationale"] for h in p["hyperparameters"] if h["name"] in ("learning_rate", "num_train_epochs")],
            "examples": [(val[i]["messages"][0]["content"], tuned[i]) for i in range(2)],
            "knowledge_answers": [tuned[len(val) + i] for i in known]}


def dry_run(source: str) -> dict:
    """The Plan tab's "Dry run (calibrate)" on the task's data: a few real steps of the model on this
    machine, just before the run (the machine's load changes from minute to minute)."""
    from finetune.plan.calibrate import dry_run_in_child

    return dry_run_in_child(model_id=MODEL, source=source, method="lora", seq_len=256, batch_size=4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--no-calibrate", action="store_true", help="use the planner's uncalibrated time model")
    a = ap.parse_args()
    from finetune.builtin import ensure_smollm2

    ensure_smollm2()
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
    rows = []
    for name in a.tasks.split(","):
        r = run_task(name, not a.no_calibrate)
        rows.append(r)
        print(json.dumps(r), flush=True)
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")
    print(f"{'task':8} {'rows':>4} {'steps':>5} {'lr':>7} {'epochs':>6} {'held-out base->tuned':>21} "
          f"{'knowledge kept':>14} {'wall s':>7} {'plan s':>7} {'off':>6}")
    for r in rows:
        ok = "ok" if r["tuned"] >= TARGET and not r["lost"] else "MISS"
        print(f"{r['task']:8} {r['rows']:>4} {r['steps']:>5} {r['lr']:>7g} {r['epochs']:>6g} "
              f"{r['base']:>9.0%} -> {r['tuned']:>6.0%} {ok:>4} {r['knowledge']:>14} {r['wall_s']:>7.0f} "
              f"{r['plan_s']:>7.0f} {r['off_pct']:>+5.0f}%")


if __name__ == "__main__":
    main()
