"""Adapter merging: two or more completed LoRA runs on one base model combined into a NEW run with
PEFT's `add_weighted_adapter`, saved as a run folder like a trained one, so that Evaluate, Compare,
export and push treat it like any other run.

    python -m finetune merge RUN_A RUN_B --method ties [--weights 1,1] [--density 0.5] [--name N] --json

Methods, and the PEFT combination type each one runs:
  linear       weighted sums of the adapters' A and of their B matrices (`linear`: fast, and exact for
               weights such as 1,0, but B·A then has cross terms); needs equal ranks: with different
               ranks the updates are concatenated instead (`cat`), and the result says so.
  ties         TIES: keep each adapter's `density` largest entries, elect a sign per entry, average
               the entries that agree (`ties`; different ranks: `ties_svd` on the full updates).
  dare         DARE-TIES (mergekit's usual DARE): drop entries at random keeping `density`, rescale
               by 1/density, then TIES's sign election (`dare_ties`; different ranks: `dare_ties_svd`).
  dare_linear  DARE as in its paper: random drop and rescale, then a weighted sum (`dare_linear`).
  cat          the exact weighted sum of the updates B·A, at the sum of the ranks (`cat`).
DARE is random: `seed` makes it repeatable. Default weights: 1/n each for the summing methods
(linear, dare_linear, cat: an average), 1 each for TIES and DARE-TIES (their disjoint merge already
averages the entries that agree). Each source's own scaling (alpha/r, or alpha/sqrt(r) for rsLoRA)
is folded into the merged weights, whose adapter has alpha = r (scaling 1).

The new run folder: adapter/ (adapter + the first source's tokenizer; PeftModel.from_pretrained
loads it), config.json (the first source's, with the merged rank and target modules; method lora,
or qlora when every source is QLoRA, which Evaluate then loads on the 4-bit base), status.json
(completed, `merged_from`), merge.json (sources, method, weights, density, seed, notes), data/ (the
rows Evaluate uses: the sources' validation snapshots interleaved without duplicates when they
have one kind, else the first source's), README.md, and an empty events.jsonl.
Refused, with the reason: fewer than two runs or a run named twice, runs not completed, full
fine-tunes, prefix tuning, DoRA (its trained magnitudes do not merge), different base models, and
for TIES/DARE adapters on different layers (their sign election needs every run on every layer).

The app merges in a child process: `python -m finetune.merge` with the arguments as JSON on stdin.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .config import RunConfig
from .paths import atomic_write_json, atomic_write_text, read_json, runs_dir
from .runs import RunError, artifact_dir, load_config, new_run_id, now_iso, read_status

MERGE_METHODS = ("linear", "ties", "dare", "dare_linear", "cat")
DENSITY_METHODS = ("ties", "dare", "dare_linear")
SUMMING_METHODS = ("linear", "dare_linear", "cat")
# method -> (PEFT combination type for equal ranks, for different ranks)
COMBINATION = {"linear": ("linear", "cat"), "ties": ("ties", "ties_svd"), "dare": ("dare_ties", "dare_ties_svd"),
               "dare_linear": ("dare_linear", "dare_linear_svd"), "cat": ("cat", "cat")}
LABEL = {"linear": "linear", "ties": "TIES", "dare": "DARE-TIES", "dare_linear": "DARE (linear)", "cat": "concatenation"}
MAX_RUNS = 8
MAX_RANK = 1024  # the run config's limit on lora.r
MERGE_FILE = "merge.json"


class MergeError(ValueError):
    """A merge that cannot be done: the message says which run and why."""


@dataclass
class Source:
    run_id: str
    cfg: RunConfig
    adapter: Path
    adapter_cfg: dict  # its adapter_config.json

    @property
    def rank(self) -> int:
        pattern = self.adapter_cfg.get("rank_pattern") or {}
        return max([int(self.adapter_cfg.get("r") or 0), *map(int, pattern.values())])

    @property
    def modules(self) -> frozenset:
        t = self.adapter_cfg.get("target_modules")
        return frozenset([t] if isinstance(t, str) else (t or []))


# ---------------------------------------------------------------------------------------------
# Checks (no model is loaded: a refusal comes at once)


def parse_weights(value) -> list[float] | None:
    """'0.7, 0.3' or [0.7, 0.3] -> [0.7, 0.3]; empty -> None (the method's default)."""
    if value is None or (isinstance(value, str) and not value.strip()) or value == []:
        return None
    items = value.replace(";", ",").split(",") if isinstance(value, str) else list(value)
    out = []
    for i, x in enumerate(items, 1):
        try:
            w = float(str(x).strip())
        except ValueError:
            raise MergeError(f"weights: value {i} ({str(x).strip()[:20]!r}) is not a number; write e.g. 0.7,0.3") from None
        if not math.isfinite(w) or abs(w) > 100:
            raise MergeError(f"weights: value {i} ({w}) must be a finite number between -100 and 100")
        out.append(w)
    return out


def _source(run_id: str) -> Source:
    st = read_status(run_id)  # raises "no run" for an unknown id
    if st.get("state") != "completed":
        raise MergeError(f"run {run_id} is {st.get('state')}, not completed: only finished runs merge "
                         "(wait for it, or resume it until it completes)")
    cfg, art = load_config(run_id), artifact_dir(run_id)
    if cfg.train.method == "full" or art is None or art.name == "model":
        raise MergeError(f"run {run_id} is a full fine-tune (whole model weights, no adapter): merging combines "
                         "LoRA adapters only; train LoRA runs to merge them")
    acfg = read_json(art / "adapter_config.json", default=None) or {}
    if cfg.train.method == "prefix" or acfg.get("peft_type") != "LORA":
        raise MergeError(f"run {run_id} trained {cfg.train.method} ({acfg.get('peft_type') or 'no adapter config'}), "
                         "not a LoRA adapter: only LoRA adapters merge")
    if acfg.get("use_dora"):
        raise MergeError(f"run {run_id} is a DoRA adapter: its trained magnitude vectors do not merge with "
                         "add_weighted_adapter; merge LoRA, rsLoRA or QLoRA runs")
    return Source(run_id, cfg, art, acfg)


def check_sources(run_ids) -> list[Source]:
    """The runs to merge, each checked, all on one base model."""
    if isinstance(run_ids, str):
        run_ids = run_ids.replace(",", " ").split()
    ids = [str(r).strip() for r in run_ids or [] if str(r).strip()]
    if len(ids) < 2:
        raise MergeError(f"choose two or more completed LoRA runs to merge (got {len(ids)})")
    if len(ids) > MAX_RUNS:
        raise MergeError(f"at most {MAX_RUNS} runs merge at once (got {len(ids)})")
    twice = sorted({r for r in ids if ids.count(r) > 1})
    if twice:
        raise MergeError(f"run {twice[0]} is listed twice: list each run once and give it a larger weight instead")
    sources = [_source(r) for r in ids]
    first = sources[0]
    for s in sources[1:]:
        if s.cfg.model.model_id != first.cfg.model.model_id:
            raise MergeError(f"runs {first.run_id} and {s.run_id} adapt different base models "
                             f"({first.cfg.model.model_id} vs {s.cfg.model.model_id}): adapters merge only on one base")
    return sources


def merge_plan(sources: list[Source], method: str, weights, density) -> dict:
    """What will run: PEFT's combination type, weights, density, the new rank, and notes for the user."""
    if method not in MERGE_METHODS:
        raise MergeError(f"method: choose one of {', '.join(MERGE_METHODS)}, got {method!r}")
    n, notes = len(sources), []
    w = parse_weights(weights)
    if w is None:
        w = [round(1.0 / n, 6)] * n if method in SUMMING_METHODS else [1.0] * n
    if len(w) != n:
        raise MergeError(f"weights: {len(w)} value(s) for {n} runs; give one weight per run, in the runs' order")
    if not any(w):
        raise MergeError("weights: all are 0, so the merge would be the base model; give at least one run a weight")
    if method in DENSITY_METHODS:
        d = 0.5 if density is None or density == "" else float(density)
        if not 0.0 < d <= 1.0 or not math.isfinite(d):
            raise MergeError(f"density: the share of each update kept must be above 0 and at most 1, got {d}")
    else:
        d = None
        if density not in (None, ""):
            notes.append(f"density is used by TIES and DARE only; {method} ignores it")
    ranks = [s.rank for s in sources]
    equal = len(set(ranks)) == 1
    combination = COMBINATION[method][0 if equal else 1]
    if not equal and method != "cat":
        how = ("the updates are concatenated (cat: their exact weighted sum)" if combination == "cat"
               else f"{combination} merges the full updates and keeps rank {max(ranks)} by SVD")
        notes.append(f"the runs have different LoRA ranks ({', '.join(map(str, ranks))}): {method} needs equal "
                     f"ranks, so {how}")
    if len({s.modules for s in sources}) > 1:
        if method in DENSITY_METHODS:
            raise MergeError(f"runs {sources[0].run_id} and {next(s for s in sources if s.modules != sources[0].modules).run_id} "
                             f"adapt different layers: {LABEL[method]} elects signs across every run on every layer; "
                             "train them with the same --lora-target-modules, or merge with linear or cat")
        notes.append("the runs adapt different layers: a layer adapted by only some runs gets their weighted updates")
    rank = sum(ranks) if combination == "cat" else (max(ranks) if combination.endswith("svd") else ranks[0])
    if rank > MAX_RANK:
        raise MergeError(f"the merged adapter would have rank {rank} (the sum of the ranks), above {MAX_RANK}: "
                         "merge fewer runs, or use ties or dare")
    if any(s.adapter_cfg.get("use_rslora") for s in sources):
        notes.append("rsLoRA scaling (alpha/sqrt(r)) is folded into the merged weights; the merged adapter has "
                     "alpha = r")
    return {"method": method, "combination_type": combination, "weights": w, "density": d, "rank": rank,
            "notes": notes}


# ---------------------------------------------------------------------------------------------
# The merge itself


def _merge_adapters(sources: list[Source], plan: dict, out: Path, seed: int) -> None:
    """Load the base once with every source adapter, add the weighted adapter, save it into `out`."""
    import torch
    from peft import PeftModel

    from .modeling import load_model, load_tokenizer

    cfg = sources[0].cfg
    base = load_model(cfg.model.model_id, trust_remote_code=cfg.model.trust_remote_code)
    names = [f"src{i}" for i in range(len(sources))]
    model = PeftModel.from_pretrained(base, str(sources[0].adapter), adapter_name=names[0])
    for name, s in zip(names[1:], sources[1:]):
        model.load_adapter(str(s.adapter), adapter_name=name)
    torch.manual_seed(seed)  # DARE drops entries at random
    model.add_weighted_adapter(names, plan["weights"], "default", combination_type=plan["combination_type"],
                               density=plan["density"])
    # PEFT copies the first source's config, rsLoRA flag included, but folds every source's scaling
    # into the merged weights: the saved adapter must scale by alpha / r = 1.
    model.peft_config["default"].use_rslora = False
    model.save_pretrained(str(out), selected_adapters=["default"])
    tok_src = sources[0].adapter if (sources[0].adapter / "tokenizer_config.json").exists() else cfg.model.model_id
    load_tokenizer(str(tok_src), trust_remote_code=cfg.model.trust_remote_code).save_pretrained(str(out))
    del model, base


def _interleaved(lists: list[list[dict]]) -> list[dict]:
    """Rows taken in turn from each list, without duplicates: any prefix (Evaluate's max_examples) is balanced."""
    out, seen = [], set()
    for i in range(max(map(len, lists), default=0)):
        for rows in lists:
            if i < len(rows):
                key = json.dumps(rows[i], sort_keys=True, ensure_ascii=False)
                if key not in seen:
                    seen.add(key)
                    out.append(rows[i])
    return out


def _write_eval_rows(sources: list[Source], folder: Path) -> dict:
    """data/: the rows Evaluate reads (the snapshot format of finetune.snapshot)."""
    from .evaluate import validation_rows
    from .snapshot import SNAPSHOT_DIR, rows_sha256

    got = [validation_rows(s.run_id, s.cfg) for s in sources]
    kinds = [k for _, k, _ in got]
    if len(set(kinds)) == 1:
        rows, how = _interleaved([r for r, _, _ in got]), "the validation rows of every source run, interleaved"
    else:
        rows, how = got[0][0], (f"the first run's validation rows (the sources' data kinds differ: "
                                f"{', '.join(sorted(set(kinds)))})")
    first = sources[0].cfg.data
    meta = {"source": " + ".join(dict.fromkeys(s.cfg.data.source for s in sources)), "kind": kinds[0],
            "rows": len(rows), "sha256": rows_sha256(rows), "val_ratio": first.val_ratio, "seed": first.seed,
            "from_runs": [s.run_id for s in sources], "how": how}
    d = folder / SNAPSHOT_DIR
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_text(d / "validation.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    atomic_write_json(d / "meta.json", meta)
    return meta


def _merged_config(sources: list[Source], plan: dict, name: str, owner: str) -> RunConfig:
    cfg = sources[0].cfg
    if all(s.cfg.lora.target_modules.strip() == "all-linear" for s in sources):
        targets = "all-linear"
    else:
        targets = ",".join(sorted(set().union(*(s.modules for s in sources))))
    method = "qlora" if all(s.cfg.train.method == "qlora" for s in sources) else "lora"
    return dataclasses.replace(
        cfg, name=name, owner=owner,
        lora=dataclasses.replace(cfg.lora, r=plan["rank"], alpha=plan["rank"], target_modules=targets),
        train=dataclasses.replace(cfg.train, method=method, init_from_run=""))


def _card(run_id: str, cfg: RunConfig, meta: dict) -> str:
    rows = "\n".join(f"| {s['run_id']} | {s['method']} | {s['data']} | {s['rank']} | {s['weight']} |"
                     for s in meta["sources"])
    notes = "".join(f"- {n}\n" for n in meta["notes"])
    return (f"---\nlibrary_name: peft\ntags: [fine-tune-studio, merge]\n---\n\n# {run_id}\n\n"
            f"A merge of {len(meta['sources'])} LoRA adapters of `{cfg.model.model_id}` made with Fine-Tune Studio: "
            f"**{LABEL[meta['method']]}** (PEFT `{meta['combination_type']}`), density {meta['density']}, "
            f"seed {meta['seed']}; merged rank {meta['rank']}.\n\n| source run | method | data | rank | weight |\n"
            f"|---|---|---|---|---|\n{rows}\n\n{notes}\nEvaluation rows: {meta['eval_data']['how']}.\n")


def merge_runs(run_ids, *, method: str = "ties", weights=None, density=None, name: str = "", seed: int = 0,
               owner: str = "") -> dict:
    """Merge completed LoRA runs into a new run folder; returns {run_id, method, combination_type,
    weights, density, rank, sources, notes, eval_data, summary, run_dir, duration_s}."""
    from .evaluate import device_lock

    t0 = time.time()
    sources = check_sources(run_ids)
    plan = merge_plan(sources, method, weights, density)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise MergeError(f"seed must be a whole number of at least 0, got {seed!r}")
    cfg = _merged_config(sources, plan, str(name or "").strip()[:60] or f"merge-{method}", str(owner or ""))
    run_id = new_run_id(cfg)
    tmp = runs_dir() / f".{run_id}.creating"
    tmp.mkdir(parents=True)
    try:
        with device_lock():  # one model at a time on a device, like evaluations
            _merge_adapters(sources, plan, tmp / "adapter", seed)
        eval_meta = _write_eval_rows(sources, tmp)
        meta = dict(plan, seed=seed, eval_data=eval_meta, created=now_iso(),
                    sources=[{"run_id": s.run_id, "method": s.cfg.train.method, "data": s.cfg.data.source,
                              "rank": s.rank, "alpha": s.adapter_cfg.get("lora_alpha"), "weight": w}
                             for s, w in zip(sources, plan["weights"])])
        atomic_write_json(tmp / MERGE_FILE, meta)
        atomic_write_json(tmp / "config.json", cfg.to_dict())
        atomic_write_json(tmp / "status.json", {
            "run_id": run_id, "state": "completed", "step": 0, "total_steps": 0, "created": now_iso(),
            "updated": now_iso(), "merged_from": [s.run_id for s in sources], "merge_method": method,
            "duration_s": round(time.time() - t0, 2), "backend": "merge", "backend_why": "adapter merge (no training)"})
        (tmp / "events.jsonl").touch()
        atomic_write_text(tmp / "README.md", _card(run_id, cfg, meta))
        os.rename(tmp, runs_dir() / run_id)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _result(run_id, meta, time.time() - t0)


def _result(run_id: str, meta: dict, seconds: float) -> dict:
    w = ", ".join(f"{x:g}" for x in meta["weights"])
    summary = (f"Merged {len(meta['sources'])} runs with {LABEL[meta['method']]} (PEFT {meta['combination_type']}), "
               f"weights {w}" + (f", density {meta['density']:g}" if meta["density"] is not None else "")
               + f" into run {run_id} (LoRA rank {meta['rank']}). Evaluate uses {meta['eval_data']['rows']} rows: "
               f"{meta['eval_data']['how']}." + "".join(f" Note: {n}." for n in meta["notes"]))
    return {"run_id": run_id, "method": meta["method"], "combination_type": meta["combination_type"],
            "weights": meta["weights"], "density": meta["density"], "rank": meta["rank"], "seed": meta["seed"],
            "sources": meta["sources"], "notes": meta["notes"], "eval_data": meta["eval_data"], "summary": summary,
            "run_dir": str(runs_dir() / run_id), "duration_s": round(seconds, 2)}


if __name__ == "__main__":  # the app's child: python -m finetune.merge < {"run_ids": [...], "method": ...}
    from .workgate import child_main

    child_main(merge_runs)
