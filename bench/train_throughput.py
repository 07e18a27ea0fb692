"""Training throughput: our trainer on its hardware-chosen defaults vs TRL's SFTTrainer at its own defaults.

    python bench/train_throughput.py            # demo 1 and 3 epochs, compute-bound 64 rows x ~512 tokens
    python bench/train_throughput.py --quick    # demo 1 epoch, compute-bound 8 rows: a few minutes
    python bench/train_throughput.py --workloads compute --rows 32

Each workload is trained twice, each time in a fresh process whose whole wall time is measured (start-up
counts: a user waits for it):
  ours  `python -m finetune train ... --wait` (the CLI the app and users run: it starts the training child)
  trl   a script that builds `SFTTrainer(model=path, args=SFTConfig(...defaults...))` with the same model,
        data (prompt/completion, so TRL also trains the answers only), LoRA rank/alpha/targets, learning rate
        and epochs, and everything else at TRL's defaults (bf16 autocast, gradient checkpointing,
        batch 8, max_length 1024, chunked NLL loss).
Workloads: (a) builtin:tiny-chat on builtin:demo, 1 and 3 epochs; (b) compute-bound: a randomly
initialised model with SmolLM2-135M's configuration (built offline from the config, with the demo
model's tokenizer) on rows of about 512 tokens.
Printed per run: wall time, trained tokens/s (non-padding tokens x epochs / wall), MFU against this CPU's
measured matmul peak in fp32 and bf16 (model FLOPs: 4N frozen + 6N LoRA + attention), and the loss on the
answer tokens of the validation split (same code for both). The CPU may be shared: figures are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
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
LR = {"demo": 2e-3, "compute": 2e-4}
RANK, ALPHA = 16, 32


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


def compute_rows(n: int) -> list[dict]:
    """Instruction rows of about 512 tokens (a long prompt and a long answer) from the demo facts."""
    from finetune.builtin import demo_records

    recs = demo_records()
    rows = []
    for i in range(n):
        chunk = recs[(i * 11) % len(recs):(i * 11) % len(recs) + 11]
        prompt = " ".join(f"{r['instruction']} {r['input']}".strip() for r in chunk) * 2
        answer = " ".join(f"{r['instruction']} {r['output']}." for r in chunk) * 2
        rows.append({"instruction": "Answer every question in order. " + prompt, "input": "", "output": answer})
    return rows


def prepare(workload: str, home: Path, rows: int) -> dict:
    """Model path, data path (Alpaca JSONL), and the same train/validation split for both variants."""
    from finetune.builtin import demo_records, ensure_tiny_chat

    data = home / f"{workload}.jsonl"
    if workload.startswith("demo"):
        model, recs, seq = str(ensure_tiny_chat()), demo_records(), 256
        ours_model = "builtin:tiny-chat"  # our trainer's own demo defaults apply to the built-in id
    else:
        model, recs, seq = str(build_compute_model(home)), compute_rows(rows), 640
        ours_model = model
    data.write_text("\n".join(json.dumps(r) for r in recs))
    return {"model": model, "ours_model": ours_model, "data": str(data), "max_seq_len": seq}


def split(data: str):
    from finetune.data import load_prepared

    return load_prepared(data)  # default val_ratio/seed: what our trainer uses too


# ---------------------------------------------------------------------------------------------
# The TRL-defaults worker (runs in its own process)


def trl_worker(model: str, data: str, epochs: float, lr: float, out: str) -> None:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    train, _val, kind = split(data)
    assert kind == "messages", kind
    ds = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in train])
    import torch

    # use_cpu is the one setting TRL's defaults need to start at all on a CPU (bf16=True asks for it).
    args = SFTConfig(output_dir=out, learning_rate=lr, num_train_epochs=epochs, report_to="none",
                     save_strategy="no", disable_tqdm=True, use_cpu=not torch.cuda.is_available())
    peft_cfg = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, peft_config=peft_cfg)
    trainer.train()
    trainer.model.save_pretrained(Path(out) / "adapter")
    print(json.dumps({"adapter": str(Path(out) / "adapter"), "bf16": args.bf16,
                      "gradient_checkpointing": args.gradient_checkpointing,
                      "batch_size": args.per_device_train_batch_size}))


# ---------------------------------------------------------------------------------------------
# Measuring


def run_variant(variant: str, wl: dict, epochs: float, home: Path) -> dict:
    env = dict(os.environ, FINETUNE_HOME=str(home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    lr = LR["demo" if "tiny-chat" in wl["model"] else "compute"]
    if variant == "ours":
        helptext = subprocess.run([sys.executable, "-m", "finetune", "train", "--help"], cwd=ROOT, env=env,
                                  capture_output=True, text=True).stdout
        lr_flag = "--learning-rate" if "--learning-rate" in helptext else "--lr"  # the CLI is generated from fields
        cmd = [sys.executable, "-m", "finetune", "train", "--model", wl["ours_model"], "--data", wl["data"],
               "--epochs", str(epochs), lr_flag, str(lr), "--max-seq-len", str(wl["max_seq_len"]),
               "--wait", "--json", "--timeout-s", "36000"]
    else:
        out = tempfile.mkdtemp(prefix="trl-", dir=home)
        cmd = [sys.executable, __file__, "--trl-worker", wl["model"], wl["data"], str(epochs), str(lr), out]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{p.stderr[-3000:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    if variant == "ours":
        if res.get("state") != "completed":
            raise RuntimeError(f"ours ended {res.get('state')}: {res.get('error')}")
        adapter = res["artifact"]
        info = {"precision": res.get("precision"), "backend": res.get("backend"),
                "batch_size": json.loads((Path(res["run_dir"]) / "config.json").read_text())["train"]["batch_size"]}
    else:
        adapter = res["adapter"]
        info = {"precision": "bf16" if res["bf16"] else "fp32", "gradient_checkpointing": res["gradient_checkpointing"],
                "batch_size": res["batch_size"]}
    return {"variant": variant, "wall_s": wall, "adapter": adapter, **info}


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


def measured_peak_tflops(dtype_name: str, seconds: float = 2.0) -> float:
    import torch

    from finetune.modeling import set_threads

    set_threads()
    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(1024, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
    for _ in range(3):
        a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return 2 * 1024 ** 3 * n / (time.perf_counter() - t0) / 1e12


def model_flops_per_token(model_path: str, mean_len: float) -> float:
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_path)
    h, L, i, V = c.hidden_size, c.num_hidden_layers, c.intermediate_size, c.vocab_size
    kv = h // c.num_attention_heads * c.num_key_value_heads
    lin = L * (2 * h * h + 2 * h * kv + 3 * h * i) + V * h  # block linears + lm_head
    lora = RANK * L * ((h + h) * 2 + (h + kv) * 2 + (h + i) * 3)
    return 4 * lin + 6 * lora + 12 * L * h * mean_len / 2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="demo 1 epoch + compute-bound on 8 rows")
    ap.add_argument("--workloads", default=None, help="comma list of demo1, demo3, compute")
    ap.add_argument("--rows", type=int, default=None, help="compute-bound rows (default 64, quick 8)")
    ap.add_argument("--variants", default="ours,trl")
    ap.add_argument("--trl-worker", nargs=5, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.trl_worker:
        model, data, epochs, lr, out = a.trl_worker
        trl_worker(model, data, float(epochs), float(lr), out)
        return
    workloads = (a.workloads or ("demo1,compute" if a.quick else "demo1,demo3,compute")).split(",")
    rows = a.rows or (8 if a.quick else 64)
    home = Path(tempfile.mkdtemp(prefix="fts-throughput-"))
    os.environ["FINETUNE_HOME"] = str(home)
    peak = {d: measured_peak_tflops(d) for d in ("float32", "bfloat16")}
    print(f"CPU: {os.cpu_count()} logical cores, load {os.getloadavg()[0]:.1f}; measured matmul peak "
          f"fp32 {peak['float32'] * 1e3:.1f} GFLOP/s, bf16 {peak['bfloat16'] * 1e3:.1f} GFLOP/s (MFU bf16 above 100% means "
          f"this CPU has no native bf16: bf16 matmuls are slower than fp32 here)", flush=True)
    results = []
    for w in workloads:
        wl = prepare("demo" if w.startswith("demo") else "compute", home, rows)
        epochs = 3.0 if w == "demo3" else 1.0
        train, val, _ = split(wl["data"])
        from finetune.modeling import load_tokenizer
        from finetune.tokenize import tokenize_rows

        ex, _ = tokenize_rows(load_tokenizer(wl["model"]), train, "messages", wl["max_seq_len"])
        tokens = sum(len(e["input_ids"]) for e in ex) * epochs
        fpt = model_flops_per_token(wl["model"], tokens / epochs / max(len(ex), 1))
        for v in a.variants.split(","):
            r = run_variant(v, wl, epochs, home)
            r.update(workload=w, tokens=tokens, tokens_per_s=tokens / r["wall_s"])
            r["mfu_fp32"] = r["tokens_per_s"] * fpt / (peak["float32"] * 1e12)
            r["mfu_bf16"] = r["tokens_per_s"] * fpt / (peak["bfloat16"] * 1e12)
            r["answer_loss"] = answer_loss(wl["model"], r["adapter"], val, wl["max_seq_len"])
            results.append(r)
            print(json.dumps({k: (round(x, 4) if isinstance(x, float) else x) for k, x in r.items()}), flush=True)
    print(f"\n{'workload':<9} {'variant':<6} {'wall s':>8} {'tokens/s':>9} {'MFU fp32':>9} {'MFU bf16':>9} "
          f"{'ans loss':>9}  settings")
    for r in results:
        print(f"{r['workload']:<9} {r['variant']:<6} {r['wall_s']:>8.1f} {r['tokens_per_s']:>9.0f} "
              f"{r['mfu_fp32']:>9.1%} {r['mfu_bf16']:>9.1%} {r['answer_loss']:>9.3f}  "
              f"{r.get('precision')}, batch {r.get('batch_size')}"
              f"{', grad ckpt' if r.get('gradient_checkpointing') else ''}")
    for w in workloads:
        pair = {r["variant"]: r for r in results if r["workload"] == w}
        if {"ours", "trl"} <= set(pair):
            print(f"{w}: ours is {pair['trl']['wall_s'] / pair['ours']['wall_s']:.2f}x TRL's defaults "
                  f"(answer loss {pair['ours']['answer_loss']:.3f} vs {pair['trl']['answer_loss']:.3f})")


if __name__ == "__main__":
    main()
