"""Training throughput: our trainer on its hardware-chosen defaults vs TRL's SFTTrainer at its own defaults.

    python bench/train_throughput.py            # the three workloads below, full size
    python bench/train_throughput.py --quick    # the same three, small: checks the script works
    python bench/train_throughput.py --workloads compute --rows 32 --repeats 2
    python bench/train_throughput.py --workloads real --variants ours --profile   # where a step's time goes
    python bench/train_throughput.py --workloads compute --rows 16 --trl-budget-s 600   # TRL projected

Each workload is trained by both variants, alternating (ours, trl, ours, trl with --repeats 2), each
time in a fresh process whose whole wall time is measured (start-up counts: a user waits for it):
  ours  `python -m finetune train ... --wait` (the CLI the app and users run: it starts the training child)
  trl   a script that builds `SFTTrainer(model=path, args=SFTConfig(...defaults...))` with the same model,
        data (prompt/completion, so TRL also trains the answers only), LoRA rank/alpha/targets/dropout, learning
        rate, epochs and seed, and everything else at TRL's defaults (bf16 autocast, gradient checkpointing,
        batch 8, max_length 1024, chunked NLL loss).
        With --trl-budget-s, a TRL run stops after that much training and its wall time is projected from
        its mean step (on a CPU without native bf16 its bf16 autocast makes a run take hours).
  trl-same (only when asked, --variants ours,trl,trl-same) the same script with our precision choice (bf16
        only where the CPU has it natively) and no gradient checkpointing: what our trainer learns against
        what TRL's trainer learns at the same numerics, apart from what TRL's defaults choose.
Workloads:
  demo3    builtin:tiny-chat on builtin:demo, 3 epochs
  compute  a randomly initialised model with SmolLM2-135M's shape (built offline from the config, with
           the demo model's tokenizer): 64 rows of about 1024 tokens, 1 epoch (--quick: 8 rows x 256)
  real     builtin:smollm2-135m-instruct (the real model, offline) on builtin:demo's rows, 1 epoch
           (--quick: 64 rows); skipped with a message where that built-in is unknown
Printed per run: wall time, trained tokens/s (non-padding tokens x epochs / wall), MFU against this CPU's
measured matmul peak in fp32 and bf16 (model FLOPs: 4N frozen + 6N LoRA + attention), the loss on the
answer tokens of the validation split (same code for both), and for ours the phases of the training
child (status.json `phases_s`) plus the time outside it (the CLI's start, preflight and waiting).
A run is INVALID when other processes used more than a tenth of a core during it (/proc/stat busy time
minus the CPU time of our own children) or in the 5 seconds before it (the 1-minute load average, printed
before and after each run, still counts this bench's previous run for a minute): rerun on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SMOLLM2_135M = dict(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                    num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                    max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=True,
                    rope_theta=100000.0, initializer_range=0.041)
LR = {"demo3": 2e-3, "compute": 2e-4, "real": 2e-4}
RANK, ALPHA, DROPOUT = 16, 32, 0.0
OTHERS_MAX_CORES = 0.1  # other processes' CPU during a run, in cores on average


# ---------------------------------------------------------------------------------------------
# Workload preparation (not timed)


def build_compute_model(home: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from finetune.modeling import load_tokenizer

    out = home / "models" / "smollm2-135m-random"
    if (out / "config.json").exists():
        return out
    tok = load_tokenizer("builtin:tiny-chat")
    cfg = {k: v for k, v in SMOLLM2_135M.items() if k != "model_type"}
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**cfg, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def compute_rows(n: int, tokens: int, tok) -> list[dict]:
    """Instruction rows of about `tokens` tokens (a long prompt and a long answer, half each) from
    the demo facts, different for every row."""
    from finetune.builtin import demo_records

    recs = demo_records()
    rows = []
    for i in range(n):
        prompt, answer, j = "Answer every question in order.", "", i * 7
        while len(tok(prompt)["input_ids"]) < tokens // 2 - 16:
            r = recs[j % len(recs)]
            prompt += f" {r['instruction']} {r['input']}".rstrip()
            answer += f" {r['instruction']} {r['output']}."
            j += 1
        words = answer.split()
        while len(tok(" ".join(words))["input_ids"]) > tokens // 2 - 16:
            words = words[:-4]
        rows.append({"instruction": prompt, "input": "", "output": " ".join(words)})
    return rows


def real_model_path() -> str | None:
    """The real SmolLM2-135M-Instruct built-in's folder, or None (with the reason printed)."""
    try:
        from finetune.builtin import resolve_model

        return str(resolve_model("builtin:smollm2-135m-instruct"))
    except Exception as exc:  # noqa: BLE001 -- an unknown id or a missing package: skip the workload
        print(f"real: skipped, builtin:smollm2-135m-instruct is not available here ({exc})", flush=True)
        return None


def prepare(workload: str, home: Path, quick: bool, rows: int | None) -> dict | None:
    """Model path, data path (Alpaca JSONL), and the same train/validation split for both variants."""
    from finetune.builtin import demo_records, ensure_tiny_chat
    from finetune.modeling import load_tokenizer

    data = home / f"{workload}.jsonl"
    if workload == "demo3":
        model, recs, seq, epochs = str(ensure_tiny_chat()), demo_records(), 256, 3.0
        ours_model = "builtin:tiny-chat"  # our trainer's own demo defaults apply to the built-in id
    elif workload == "compute":
        model = str(build_compute_model(home))
        tokens = 256 if quick else 1024
        recs, seq, epochs = compute_rows(rows or (8 if quick else 64), tokens, load_tokenizer(model)), tokens, 1.0
        ours_model = model
    else:
        model = real_model_path()
        if model is None:
            return None
        recs, seq, epochs = demo_records()[: rows or (64 if quick else None)], 256, 1.0
        ours_model = "builtin:smollm2-135m-instruct"
    data.write_text("\n".join(json.dumps(r) for r in recs))
    return {"name": workload, "model": model, "ours_model": ours_model, "data": str(data), "max_seq_len": seq,
            "epochs": epochs, "lr": LR[workload]}


def split(data: str):
    from finetune.data import load_prepared

    return load_prepared(data)  # default val_ratio/seed: what our trainer uses too


# ---------------------------------------------------------------------------------------------
# The TRL-defaults worker (runs in its own process)


def trl_worker(model: str, data: str, epochs: float, lr: float, out: str, seed: int = 42,
               variant: str = "trl", budget_s: float = 0.0) -> None:
    """budget_s > 0: stop training after that many seconds of it (and 5 steps at least) and report the
    steps done and their times (the parent projects the whole run from them; a stopped run's loss is not compared)."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    train, _val, kind = split(data)
    assert kind == "messages", kind
    ds = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in train])
    import torch

    # use_cpu is the one setting TRL's defaults need to start at all on a CPU (bf16=True asks for it).
    same = {}
    if variant == "trl-same":  # our precision choice (bf16 only where native) and no gradient checkpointing
        from finetune.config import default_run_config, precision_plan
        from finetune.hardware import detect_hardware

        plan = precision_plan(default_run_config(model, data), detect_hardware())
        same = {"bf16": plan["bf16"], "fp16": plan["fp16"], "gradient_checkpointing": False,
                "model_init_kwargs": {"dtype": plan["weights_dtype"]}}  # the frozen base as ours stores it
    args = SFTConfig(output_dir=out, learning_rate=lr, num_train_epochs=epochs, report_to="none", seed=seed,
                     save_strategy="no", disable_tqdm=True, use_cpu=not torch.cuda.is_available(), **same)
    # The same LoRA for both: rank, alpha, all linear layers, and dropout 0 (ours by default; also PEFT's)
    peft_cfg = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=DROPOUT, target_modules="all-linear",
                          task_type="CAUSAL_LM")
    ends: list[float] = []  # perf_counter at the end of each step

    class _Budget(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            ends.append(time.perf_counter())
            if budget_s and ends[-1] - t_train > budget_s and len(ends) >= 5:  # 3 steady steps at least
                control.should_training_stop = True

    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, peft_config=peft_cfg, callbacks=[_Budget()])
    t_train = time.perf_counter()
    trainer.train()
    t_end = time.perf_counter()
    trainer.model.save_pretrained(Path(out) / "adapter")
    st = trainer.state
    # Steady step time: the steps after the first two (the first ones warm caches and allocators).
    steady = [b - a for a, b in zip(ends[1:], ends[2:])] or [b - a for a, b in zip([t_train] + ends, ends)]
    print(json.dumps({"adapter": str(Path(out) / "adapter"), "bf16": args.bf16, "fp16": args.fp16,
                      "gradient_checkpointing": args.gradient_checkpointing,
                      "batch_size": args.per_device_train_batch_size, "threads": torch.get_num_threads(),
                      "steps_done": st.global_step, "steps_total": st.max_steps, "train_s": t_end - t_train,
                      "step_s": sum(steady) / len(steady) if steady else None}))


# ---------------------------------------------------------------------------------------------
# Measuring


def _busy_s() -> float:
    """CPU seconds all processes have spent busy since boot (/proc/stat)."""
    vals = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    return (sum(vals) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")


def _busy_now(seconds: float = 5.0) -> float:
    """Cores busy on this machine right now (over `seconds`, this process idle meanwhile). The 1-minute
    load average still counts the previous run of this bench for a minute after it ended; this does not."""
    b0 = _busy_s()
    time.sleep(seconds)
    return (_busy_s() - b0) / seconds


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _ours_cmd(wl: dict, env: dict, seed: int) -> list[str]:
    helptext = subprocess.run([sys.executable, "-m", "finetune", "train", "--help"], cwd=ROOT, env=env,
                              capture_output=True, text=True).stdout
    lr_flag = "--learning-rate" if "--learning-rate" in helptext else "--lr"  # the CLI is generated from fields
    return [sys.executable, "-m", "finetune", "train", "--model", wl["ours_model"], "--data", wl["data"],
            "--epochs", str(wl["epochs"]), lr_flag, str(wl["lr"]), "--max-seq-len", str(wl["max_seq_len"]),
            "--lora-r", str(RANK), "--lora-alpha", str(ALPHA), "--lora-dropout", str(DROPOUT), "--seed", str(seed),
            "--wait", "--json", "--timeout-s", "36000"]


def run_variant(variant: str, wl: dict, home: Path, seed: int = 42, trl_budget_s: float = 0.0) -> dict:
    env = dict(os.environ, FINETUNE_HOME=str(home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    if variant == "ours":
        cmd = _ours_cmd(wl, env, seed)
    else:
        out = tempfile.mkdtemp(prefix="trl-", dir=home)
        cmd = [sys.executable, __file__, "--trl-worker", wl["model"], wl["data"], str(wl["epochs"]), str(wl["lr"]), out,
               str(seed), variant, str(trl_budget_s)]
    load_before = os.getloadavg()[0]
    busy_before = _busy_now()
    busy0, mine0, t0 = _busy_s(), _children_cpu_s(), time.perf_counter()
    # A TRL run whose steps each outlast the budget cannot stop itself at a step's end: it is killed
    # at the budget plus two minutes of start-up, and main() bounds its time from below instead.
    limit = trl_budget_s + 120 if trl_budget_s and variant != "ours" else None
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        p = None
    wall = time.perf_counter() - t0
    others = max(0.0, (_busy_s() - busy0) - (_children_cpu_s() - mine0))
    load_after = os.getloadavg()[0]
    why_invalid = []
    if busy_before > OTHERS_MAX_CORES:
        why_invalid.append(f"{busy_before:.2f} cores busy just before (load {load_before:.1f})")
    if others > OTHERS_MAX_CORES * wall:
        why_invalid.append(f"others used {others / wall:.2f} cores")
    info = {"variant": variant, "seed": seed, "wall_s": wall, "load_before": load_before, "load_after": load_after,
            "others_cores": others / wall, "invalid": "; ".join(why_invalid)}
    if p is None:  # killed at the limit
        return info | {"stopped_at_s": wall, "killed": True, "adapter": None, "gradient_checkpointing": variant == "trl",
                       "precision": "bf16" if variant == "trl" else "trl-same"}
    if p.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{p.stderr[-3000:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    if variant == "ours":
        if res.get("state") != "completed":
            raise RuntimeError(f"ours ended {res.get('state')}: {res.get('error')}")
        st = json.loads((Path(res["run_dir"]) / "status.json").read_text())
        phases = st.get("phases_s") or {}
        info |= {"adapter": res["artifact"], "precision": st.get("precision"), "threads": st.get("threads"),
                 "threads_why": st.get("threads_why"), "phases_s": phases, "mfu_status": st.get("mfu"),
                 "outside_child_s": wall - sum(phases.values()),
                 "batch_size": json.loads((Path(res["run_dir"]) / "config.json").read_text())["train"]["batch_size"]}
    else:
        info |= {"adapter": res["adapter"], "precision": "bf16" if res["bf16"] else "fp16" if res.get("fp16") else "fp32",
                 "gradient_checkpointing": res["gradient_checkpointing"], "batch_size": res["batch_size"],
                 "threads": res.get("threads"), "steps": f"{res['steps_done']}/{res['steps_total']}"}
        if trl_budget_s and res["steps_done"] < res["steps_total"]:  # stopped at --trl-budget-s: project the whole run
            left = res["steps_total"] - res["steps_done"]
            info |= {"stopped_at_s": wall, "wall_s": wall + left * res["step_s"],
                     "projected": f"stopped after {res['steps_done']} of {res['steps_total']} steps at "
                                  f"{wall:.0f} s; the rest at its mean step of {res['step_s']:.1f} s"}
    return info


def answer_loss(model_path: str, adapter: str, val_rows: list[dict], max_seq_len: int) -> float:
    """Mean cross-entropy over the answer tokens of the validation rows (prompts masked)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from finetune.modeling import load_tokenizer
    from finetune.tokenize import IGNORE, tokenize_rows

    tok = load_tokenizer(model_path)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32), adapter)
    model.eval()
    examples, _ = tokenize_rows(tok, val_rows, "messages", max_seq_len)
    total, n = 0.0, 0
    with torch.no_grad():
        for ex in examples:
            ids = torch.tensor([ex["input_ids"]])
            labels = torch.tensor([ex["labels"]])
            logits = model(input_ids=ids).logits[0, :-1].float()
            tgt = labels[0, 1:]
            mask = tgt != IGNORE
            total += torch.nn.functional.cross_entropy(logits[mask], tgt[mask], reduction="sum").item()
            n += int(mask.sum())
    return total / max(n, 1)


def measured_peak_tflops(dtype_name: str) -> float:
    """This CPU's matmul rate on all its cores (1024² matrices, 2 s), the best of two tries."""
    import torch

    from finetune.speed import measure_matmul_flops

    torch.set_num_threads(os.cpu_count() or 1)
    return max(measure_matmul_flops(dtype_name, seconds=1.0) for _ in range(2)) / 1e12


def model_flops_per_token(model_path: str, mean_len: float) -> float:
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_path)
    h, L, i, V = c.hidden_size, c.num_hidden_layers, c.intermediate_size, c.vocab_size
    kv = h // c.num_attention_heads * c.num_key_value_heads
    lin = L * (2 * h * h + 2 * h * kv + 3 * h * i) + V * h  # block linears + lm_head
    lora = RANK * L * ((h + h) * 2 + (h + kv) * 2 + (h + i) * 3)
    return 4 * lin + 6 * lora + 12 * L * h * mean_len / 2


PHASES = ("start_and_imports", "setup", "imports", "model_load", "data", "trainer_setup", "train", "final_eval",
          "save", "finish")


def report(results: list[dict], workloads: list[str]) -> None:
    print(f"\n{'workload':<8} {'variant':<8} {'wall s':>7} {'tokens/s':>9} {'MFU fp32':>9} {'MFU bf16':>9} "
          f"{'ans loss':>9} {'threads':>7}  settings / validity")
    for r in results:
        loss = "-" if r["answer_loss"] is None else f"{r['answer_loss']:.3f}"
        print(f"{r['workload']:<8} {r['variant']:<8} {('>' if r.get('killed') else '~' if r.get('projected') else '') + format(r['wall_s'], '.1f'):>7} "
              f"{r['tokens_per_s']:>9.0f} {r['mfu_fp32']:>9.1%} {r['mfu_bf16']:>9.1%} {loss:>9} "
              f"{str(r.get('threads')):>7}  "
              f"{r.get('precision')}, batch {r.get('batch_size')}{', grad ckpt' if r.get('gradient_checkpointing') else ''}"
              f"{'  PROJECTED: ' + r['projected'] if r.get('projected') else ''}"
              f"{'  INVALID: ' + r['invalid'] if r['invalid'] else ''}")
    ours = [r for r in results if r["variant"] == "ours"]
    if ours:
        print("\nour phases (s): " + " ".join(f"{p}" for p in ("outside_child",) + PHASES))
        for r in ours:
            ph = r["phases_s"]
            print(f"{r['workload']:<8} {r['outside_child_s']:>6.1f} " + " ".join(f"{ph.get(p, 0):.1f}" for p in PHASES)
                  + f"   ({r.get('threads_why')})")
    for w in workloads:
        valid = [r for r in results if r["workload"] == w and not r["invalid"]]
        o = [r for r in valid if r["variant"] == "ours"]
        t = [r for r in valid if r["variant"] == "trl"]
        if o and t:
            best_o, best_t = min(o, key=lambda r: r["wall_s"]), min(t, key=lambda r: r["wall_s"])
            done = [r for r in t if not r.get("projected")]
            lo = sum(r["answer_loss"] for r in o) / len(o)
            if done:
                lt = sum(r["answer_loss"] for r in done) / len(done)
                loss = (f"answer loss {lo:.3f} vs {lt:.3f} ({lo / lt - 1:+.1%}; mean of {len(o)} vs {len(done)} runs, "
                        f"seeds {sorted({r['seed'] for r in o + done})})")
            else:
                loss = f"answer loss {lo:.3f} vs - (TRL's runs were stopped at --trl-budget-s: not compared)"
            print(f"{w}: ours is {'at least ' if best_t.get('killed') else ''}{best_t['wall_s'] / best_o['wall_s']:.2f}x "
                  f"TRL's defaults {'(TRL: bounded by its FLOPs at the measured peak) ' if best_t.get('killed') else '(TRL projected from its measured steps) ' if best_t.get('projected') else ''}(best valid runs, "
                  f"{best_o['wall_s']:.1f} s vs {best_t['wall_s']:.1f} s); {loss}")
        same = [r for r in valid if r["variant"] == "trl-same" and not r.get("projected")]
        if o and same:
            lo, ls = (sum(r["answer_loss"] for r in x) / len(x) for x in (o, same))
            print(f"{w}: TRL's trainer at our precision, no gradient checkpointing: answer loss {lo:.3f} (ours) vs "
                  f"{ls:.3f} ({lo / ls - 1:+.1%}; mean of {len(o)} vs {len(same)} runs); ours is "
                  f"{min(r['wall_s'] for r in same) / min(r['wall_s'] for r in o):.2f}x as fast (best valid runs)")
        ran = {r["variant"] for r in results if r["workload"] == w}
        if "ours" in ran and ran & {"trl", "trl-same"} and not (o and (t or same)):  # else one side only was asked
            print(f"{w}: no valid pair (the machine was busy): rerun when it is quiet")


# ---------------------------------------------------------------------------------------------
# Where a step's time goes (--profile): two steps of our trainer under torch.profiler


PROFILE_GROUPS = (("attention", ("scaled_dot_product", "flash_attention")),
                  ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::linear", "mkldnn")),
                  ("loss and its metrics", ("log_softmax", "nll_loss", "cross_entropy", "aten::exp", "argmax")))


def _profile_group(evt) -> str:
    up = evt.cpu_parent
    while up is not None:
        if up.name.startswith("Optimizer."):
            return "optimizer step"
        if up.name.startswith("enumerate(DataLoader)"):
            return "data loading"
        up = up.cpu_parent
    if evt.name.startswith("Optimizer."):
        return "optimizer step"
    if evt.name.startswith("autograd::"):
        return "autograd engine"
    for group, keys in PROFILE_GROUPS:
        if any(k in evt.name for k in keys):
            return group
    if evt.name.startswith(("aten::", "mkldnn")):
        return "other ops (elementwise, casts, norms, rope)"
    return "python in marked ranges"


PROFILE_BATCH = {"compute": 2}  # 8 x 1024 tokens under torch.profiler took all 24 GB of this machine


def profile_worker(model: str, data: str, seq: int, batch: int = 0, steps: int = 2) -> None:
    """Our trainer's step (finetune.plan.calibrate.dry_run: the real run's loss, prefix and precision)
    on this workload, `steps` steps after the warm-up ones profiled; prints one JSON line. batch 0:
    the run's own."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    from finetune.plan import calibrate

    prof = profile(activities=[ProfilerActivity.CPU], with_flops=True)
    clock: dict = {}

    class _Profile(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == calibrate.WARMUP_STEPS + 1 and "t0" not in clock:
                prof.start()
                clock["t0"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if "t0" in clock and "wall" not in clock and state.global_step >= calibrate.WARMUP_STEPS + 1 + steps:
                clock["wall"] = time.perf_counter() - clock["t0"]
                prof.stop()
                control.should_training_stop = True

    r = calibrate.dry_run(model, data, steps=calibrate.WARMUP_STEPS + steps + 2, seq_len=seq, min_seconds=0.0,
                          save=False, callbacks=[_Profile()], batch_size=batch or None)
    groups: dict[str, float] = {}
    flops = {"matmul": 0.0}
    for evt in prof.events():
        g = _profile_group(evt)
        groups[g] = groups.get(g, 0.0) + evt.self_cpu_time_total / 1e3
        if g == "matmul":
            flops["matmul"] += float(getattr(evt, "flops", 0) or 0)
    wall_ms = clock["wall"] * 1e3
    groups["Python and dispatch outside any op"] = max(0.0, wall_ms - sum(groups.values()))
    print(json.dumps({"steps": steps, "step_ms": wall_ms / steps, "batch_size": r["batch_size"],
                      "threads": torch.get_num_threads(),
                      "groups_ms": {k: v / steps for k, v in groups.items()},
                      "matmul_gflop_per_step": flops["matmul"] / steps / 1e9}))


def profile_report(w: str, p: dict, peak: dict) -> None:
    print(f"\nwhere a step goes, {w} (ours, {p['steps']} steps profiled, batch {p['batch_size']}, "
          f"{p['threads']} threads): {p['step_ms']:.0f} ms a step")
    mm_ms = p["groups_ms"].get("matmul", 0.0)
    for g, ms in sorted(p["groups_ms"].items(), key=lambda kv: -kv[1]):
        extra = ""
        if g == "matmul" and mm_ms > 0 and p["matmul_gflop_per_step"]:
            rate = p["matmul_gflop_per_step"] / (mm_ms / 1e3)
            extra = (f"   {rate:.0f} GFLOP/s in matmuls = {rate / (peak['bfloat16'] * 1e3):.0%} of the bf16 peak, "
                     f"{rate / (peak['float32'] * 1e3):.0%} of the fp32 peak")
        print(f"  {g:<46} {ms:>9.1f} ms {ms / p['step_ms']:>6.1%}{extra}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small sizes: checks that everything runs")
    ap.add_argument("--workloads", default="demo3,compute,real", help="comma list of demo3, compute, real")
    ap.add_argument("--rows", type=int, default=None, help="rows for compute (default 64, quick 8) and real")
    ap.add_argument("--repeats", type=int, default=1, help="pairs per workload, alternating ours and trl; "
                    "pair i trains both with seed --seed + i (the answer loss of a small run varies by several "
                    "per cent with the seed: it is compared as a mean)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--variants", default="ours,trl", help="comma list of ours, trl (TRL's defaults) and "
                    "trl-same (TRL's trainer with our precision choice and no gradient checkpointing: separates "
                    "what our trainer does from what TRL's defaults choose)")
    ap.add_argument("--profile", action="store_true", help="also profile two of our steps per workload "
                    "(torch.profiler) and print where the step's time goes: matmuls (with their rate against "
                    "the measured peak), attention, loss, optimizer, other ops, Python")
    ap.add_argument("--trl-budget-s", type=float, default=0.0, help="stop each TRL run after this many seconds "
                    "of training and project its whole wall time from its mean step (where TRL's defaults would "
                    "take hours: bf16 autocast on a CPU without native bf16); its answer loss is then not "
                    "compared. 0 (default): no limit")
    ap.add_argument("--trl-worker", nargs=8, help=argparse.SUPPRESS)
    ap.add_argument("--profile-worker", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.trl_worker:
        model, data, epochs, lr, out, seed, variant, budget = a.trl_worker
        trl_worker(model, data, float(epochs), float(lr), out, int(seed), variant, float(budget))
        return
    if a.profile_worker:
        model, data, seq, batch = a.profile_worker
        profile_worker(model, data, int(seq), int(batch))
        return
    workloads = a.workloads.split(",")
    unknown = {v for v in a.variants.split(",") if v} - {"ours", "trl", "trl-same"}
    if unknown:
        ap.error(f"--variants: unknown {', '.join(sorted(unknown))} (choose from ours, trl, trl-same)")
    # Built-in models are built once and shared (the real one takes minutes to dequantize); runs go
    # to a fresh home folder.
    os.environ.setdefault("FINETUNE_MODELS_DIR", str(Path(os.environ.get("FINETUNE_HOME", ROOT / "finetune_home"))
                                                     / "models"))
    home = Path(tempfile.mkdtemp(prefix="fts-throughput-"))
    os.environ["FINETUNE_HOME"] = str(home)
    peak = {d: measured_peak_tflops(d) for d in ("float32", "bfloat16")}
    print(f"CPU: {os.cpu_count()} logical cores, load {os.getloadavg()[0]:.1f}; measured matmul peak "
          f"fp32 {peak['float32'] * 1e3:.1f} GFLOP/s, bf16 {peak['bfloat16'] * 1e3:.1f} GFLOP/s (MFU bf16 above 100% means "
          f"this CPU has no native bf16: bf16 matmuls are slower than fp32 here)", flush=True)
    results = []
    from finetune.modeling import load_tokenizer
    from finetune.tokenize import tokenize_rows

    for w in workloads:
        wl = prepare(w, home, a.quick, a.rows)
        if wl is None:
            continue
        train, val, _ = split(wl["data"])
        ex, _ = tokenize_rows(load_tokenizer(wl["model"]), train, "messages", wl["max_seq_len"])
        tokens = sum(len(e["input_ids"]) for e in ex) * wl["epochs"]
        fpt = model_flops_per_token(wl["model"], tokens / wl["epochs"] / max(len(ex), 1))
        for i in range(a.repeats):
            for v in [v for v in a.variants.split(",") if v]:  # --variants "" --profile: the profile only
                r = run_variant(v, wl, home, a.seed + i, a.trl_budget_s)
                if r.get("killed"):  # not one step done in the budget: the run's FLOPs at the peak rate
                    # trl-same trains at our precision: the faster of the two peaks keeps the bound low
                    peak_of = peak["bfloat16"] if r["precision"] == "bf16" else max(peak.values())
                    r["wall_s"] = max(r["stopped_at_s"], tokens * fpt / (peak_of * 1e12))
                    r["projected"] = (f"killed at {r['stopped_at_s']:.0f} s before its first 5 steps ended; "
                                      f"about {r['wall_s']:.0f} s at least: its model FLOPs at this CPU's "
                                      f"measured {'bf16' if r['precision'] == 'bf16' else 'fastest'} matmul rate")
                r.update(workload=w, tokens=tokens, tokens_per_s=tokens / r["wall_s"])
                r["mfu_fp32"] = r["tokens_per_s"] * fpt / (peak["float32"] * 1e12)
                r["mfu_bf16"] = r["tokens_per_s"] * fpt / (peak["bfloat16"] * 1e12)
                r["answer_loss"] = (None if r.get("projected") else  # a stopped run's adapter is half-trained
                                    answer_loss(wl["model"], r["adapter"], val, wl["max_seq_len"]))
                results.append(r)
                print(json.dumps({k: (round(x, 4) if isinstance(x, float) else x) for k, x in r.items()}), flush=True)
    report(results, workloads)
    for w in workloads if a.profile else ():
        wl = prepare(w, home, a.quick, a.rows)
        if wl is None:
            continue
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                   TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
        p = subprocess.run([sys.executable, __file__, "--profile-worker", wl["ours_model"], wl["data"],
                            str(wl["max_seq_len"]), str(PROFILE_BATCH.get(w, 0))], cwd=ROOT, env=env,
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"profile of {w} failed:\n{p.stderr[-3000:]}")
        profile_report(w, json.loads(p.stdout.strip().splitlines()[-1]), peak)


if __name__ == "__main__":
    main()
