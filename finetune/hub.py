"""The Hub: push a run (adapter or full model, merged weights, GGUF), push a prepared dataset.

    push_run(run_id, "owner/name", token=...)      -> {"url", "commit", "files", "repo_id", "private"}
    push_dataset(folder, "owner/name", token=...)  -> the same keys, for a dataset repo
    merge_run(run_id, out_dir)                     -> merged safetensors + tokenizer in out_dir

Everything a push sends goes in ONE commit with a clear message. Repos are private unless asked
otherwise, and the repo id is validated before anything is sent. huggingface_hub retries its own
preupload calls but not `create_commit`, so commits are retried here: on a 5xx or a timeout we look
at the repo's head before trying again (the commit may have landed and only its answer got lost),
and every attempt names the parent commit, so the Hub itself refuses a second copy. A 401 or 403
fails at once with a message that says which permission is missing.

Tokens are arguments (a visitor's OAuth token, or HF_TOKEN locally), never written anywhere. What is
pushed never carries a local path: the base model is named by its Hub id (or not at all).
CLI: `python -m finetune push RUN_ID --repo OWNER/NAME [--public] [--merged] [--gguf q4_k_m] --json`.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from .paths import read_json

Progress = Callable[[float, str], None]
_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")
_OWNER_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,40}[A-Za-z0-9])?$")
_HUB_MODEL_RE = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9-]{0,41}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


class HubError(RuntimeError):
    """A push that cannot go on, with a message a user can act on."""


class HubAuthError(HubError):
    """401/403: the token is missing, invalid, or lacks a permission. Never retried."""


# ---------------------------------------------------------------------------------------------
# names


def validate_repo_id(repo_id: str, field: str = "repo") -> str:
    """`owner/name` as the Hub accepts it, or HubError naming the field and the rule broken."""
    if not isinstance(repo_id, str) or not repo_id.strip():
        raise HubError(f"{field}: empty; write OWNER/NAME, e.g. alice/my-adapter")
    rid = repo_id.strip()
    parts = rid.split("/")
    if len(parts) != 2:
        raise HubError(f"{field}: {rid!r} must be OWNER/NAME (one slash), e.g. alice/my-adapter")
    owner, name = parts
    if not _OWNER_RE.match(owner):
        raise HubError(f"{field}: owner {owner!r} may hold only letters, digits and '-' (at most 42)")
    if not _NAME_RE.match(name) or ".." in name or "--" in name or name.endswith(".git"):
        raise HubError(f"{field}: name {name!r} may hold letters, digits, '-', '_' and '.', must start and end "
                       "with a letter or digit, at most 96 characters, no '--' or '..', not ending in .git")
    return rid


def hub_model_id(model_id: str) -> str | None:
    """The Hub id of a base model, or None for builtin models and local folders (never a path).
    builtin:smollm2-135m-instruct is SmolLM2-135M-Instruct (dequantized from its Q4_1 GGUF)."""
    from .builtin import SMOLLM2_HUB_ID, SMOLLM2_ID

    if model_id == SMOLLM2_ID:
        return SMOLLM2_HUB_ID
    if not model_id or model_id.startswith("builtin:") or os.path.isabs(model_id) or model_id.startswith("."):
        return None
    if os.path.exists(model_id) or not _HUB_MODEL_RE.match(model_id):
        return None
    return model_id


def _dataset_label(source: str) -> tuple[str | None, str]:
    """(Hub dataset id or None, a display name that holds no server path)."""
    if source.startswith("hub:"):
        rid = source[4:].split(":")[0]
        return rid, rid
    if source.startswith("builtin:"):
        return None, source
    return None, Path(source).name or "local dataset"


# ---------------------------------------------------------------------------------------------
# talking to the Hub


def _api(token: str | None):
    from huggingface_hub import HfApi

    return HfApi(token=token)


def _status(exc: BaseException) -> int | None:
    resp = getattr(exc, "response", None)
    return getattr(resp, "status_code", None)


def _is_transient(exc: BaseException) -> bool:
    import httpx

    if isinstance(exc, (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)):
        return True
    code = _status(exc)
    return code is not None and (code >= 500 or code == 429)


def _auth_message(exc: BaseException, action: str, repo_id: str) -> str:
    code = _status(exc)
    owner = repo_id.split("/")[0]
    if code == 401:
        return (f"{action} {repo_id}: the Hub refused the token (401: missing, invalid or expired). Log in again "
                "(on a Space) or set HF_TOKEN to a token with the 'write' role (huggingface.co/settings/tokens)")
    return (f"{action} {repo_id}: the token has no write permission for '{owner}' (403). It needs the 'write' "
            f"role, or a fine-grained token with 'Write access to contents/settings of all repos' under '{owner}' "
            "(with OAuth: log in with the write-repos scope)")


def _call(fn, action: str, repo_id: str, *, retries: int, backoff_s: float):
    """Run an idempotent Hub call, retrying transient errors; 401/403 fail at once."""
    for attempt in range(retries + 1):
        try:
            return fn()
        except Exception as exc:
            if _status(exc) in (401, 403):
                raise HubAuthError(_auth_message(exc, action, repo_id)) from None
            if not _is_transient(exc) or attempt == retries:
                raise HubError(f"{action} {repo_id}: {_short(exc)}") from None
            time.sleep(backoff_s * (2 ** attempt))


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    from .train import redact

    return redact(text)[:300]


def ensure_repo(api, repo_id: str, *, repo_type: str = "model", private: bool = True, space_sdk: str | None = None,
                retries: int = 4, backoff_s: float = 2.0) -> str:
    """Create the repo if missing (private by default); return its head commit."""
    kw = {"space_sdk": space_sdk} if repo_type == "space" else {}
    _call(lambda: api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, **kw),
          "create", repo_id, retries=retries, backoff_s=backoff_s)
    return head_commit(api, repo_id, repo_type, retries=retries, backoff_s=backoff_s)


def head_commit(api, repo_id: str, repo_type: str = "model", *, retries: int = 4, backoff_s: float = 2.0) -> str:
    info = _call(lambda: api.repo_info(repo_id, repo_type=repo_type), "read", repo_id,
                 retries=retries, backoff_s=backoff_s)
    return info.sha


def commit_once(api, repo_id: str, operations: list, message: str, *, repo_type: str = "model",
                description: str = "", parent: str | None = None, retries: int = 4, backoff_s: float = 2.0,
                progress: Progress | None = None) -> dict:
    """One commit of `operations`, retried on 5xx/timeouts without ever producing two.

    Each attempt names `parent` (the head before the first attempt): if an earlier attempt landed,
    the Hub answers 412 instead of committing again. Before each retry the head is read: a new head
    whose title is ours means the commit landed and its answer was lost."""
    if parent is None:
        parent = head_commit(api, repo_id, repo_type, retries=retries, backoff_s=backoff_s)
    last: BaseException | None = None
    for attempt in range(retries + 1):
        try:
            info = api.create_commit(repo_id, operations, commit_message=message, commit_description=description,
                                     repo_type=repo_type, parent_commit=parent)
            return {"commit": info.oid, "commit_url": info.commit_url, "attempts": attempt + 1}
        except Exception as exc:
            code = _status(exc)
            if code in (401, 403):
                raise HubAuthError(_auth_message(exc, "push to", repo_id)) from None
            if not (_is_transient(exc) or code == 412):
                raise HubError(f"push to {repo_id}: {_short(exc)}") from None
            last = exc
        # The attempt failed in a way that may or may not have committed: look before retrying.
        time.sleep(backoff_s * (2 ** attempt))
        head = head_commit(api, repo_id, repo_type, retries=retries, backoff_s=backoff_s)
        if head != parent:
            commits = _call(lambda: api.list_repo_commits(repo_id, repo_type=repo_type), "read", repo_id,
                            retries=retries, backoff_s=backoff_s)
            if commits and commits[0].commit_id == head and commits[0].title == message:
                return {"commit": head, "commit_url": None, "attempts": attempt + 1, "recovered": True}
            raise HubError(f"push to {repo_id}: the repo changed while pushing (new head {head[:8]} is not ours); "
                           "push again")
        if progress:
            progress(0.9, f"the Hub answered {code or type(last).__name__}; retrying ({attempt + 1}/{retries})")
    raise HubError(f"push to {repo_id}: gave up after {retries + 1} attempts: {_short(last)}")


# ---------------------------------------------------------------------------------------------
# what a run pushes


def loss_curve_png(events: list[dict], title: str = "loss") -> bytes | None:
    """A small PNG of training and validation loss per step (Pillow: no plotting library needed)."""
    from PIL import Image, ImageDraw

    train = [(e["step"], e["loss"]) for e in events if isinstance(e.get("loss"), (int, float)) and e.get("step") is not None]
    val = [(e["step"], e["eval_loss"]) for e in events if isinstance(e.get("eval_loss"), (int, float)) and e.get("step") is not None]
    pts = [p for p in train + val if p[1] == p[1] and abs(p[1]) != float("inf")]
    if not pts:
        return None
    W, H, L, R, T, B = 640, 360, 60, 20, 30, 40
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1e-6)
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    d.rectangle([L, T, W - R, H - B], outline="black")

    def xy(s, v):
        return L + (s - x0) / (x1 - x0) * (W - L - R), H - B - (v - y0) / (y1 - y0) * (H - T - B)

    for series, color in ((train, (31, 119, 180)), (val, (255, 127, 14))):
        series = [p for p in series if p in pts]
        if len(series) > 1:
            d.line([xy(*p) for p in series], fill=color, width=2)
        for p in series:
            x, y = xy(*p)
            d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
    d.text((L, 8), f"{title}: training (blue), validation (orange)", fill="black")
    d.text((L - 55, T), f"{y1:.3g}", fill="black")
    d.text((L - 55, H - B - 10), f"{y0:.3g}", fill="black")
    d.text((L, H - B + 8), f"step {x0}", fill="black")
    d.text((W - R - 70, H - B + 8), f"step {x1}", fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


_PATH_KEYS = ("base_model_name_or_path", "_name_or_path", "name_or_path")


def _scrub_json(obj, public_base: str | None):
    """Replace local paths in the usual *name_or_path keys with the public base id (or None)."""
    if isinstance(obj, dict):
        return {k: (public_base if k in _PATH_KEYS and isinstance(v, str) and v and hub_model_id(v) is None
                    else _scrub_json(v, public_base)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_scrub_json(v, public_base) for v in obj]
    return obj


def _scrub_paths(obj, run_folder: Path):
    """Strings that are paths on this machine become paths relative to the run (or just a name)."""
    if isinstance(obj, dict):
        return {k: _scrub_paths(v, run_folder) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_scrub_paths(v, run_folder) for v in obj]
    if isinstance(obj, str) and os.path.isabs(obj) and len(obj) < 4096:
        p = Path(obj)
        try:
            return p.relative_to(run_folder).as_posix()
        except ValueError:
            return p.name
    return obj


def _folder_ops(folder: Path, prefix: str, public_base: str | None) -> dict[str, bytes | str]:
    """path_in_repo -> local file path (or bytes for scrubbed JSON) for every file in a folder."""
    out: dict[str, bytes | str] = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name.startswith("."):
            continue
        rel = prefix + p.relative_to(folder).as_posix()
        if p.suffix == ".json" and p.stat().st_size < 5_000_000:
            data = json.loads(p.read_text(encoding="utf-8"))
            out[rel] = (json.dumps(_scrub_json(data, public_base), indent=2, ensure_ascii=False) + "\n").encode()
        else:
            out[rel] = str(p)
    return out


def model_card(run_id: str, repo_id: str, *, merged: bool = False, gguf_files: list[str] | None = None) -> str:
    """The model card (README.md) of a pushed run: card data with model-index from eval/report.json."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from .runs import artifact_dir, load_config, read_status, run_dir

    cfg, st, d = load_config(run_id), read_status(run_id), run_dir(run_id)
    full = cfg.train.method == "full" or (artifact_dir(run_id) or Path()).name == "model"
    base = hub_model_id(cfg.model.model_id)
    ds_id, ds_name = _dataset_label(cfg.data.source)
    report = read_json(d / "eval" / "report.json", default=None)
    evals = []
    if report and isinstance(report.get("finetuned"), dict):
        for key, name in (("exact_match", "exact match"), ("perplexity", "perplexity")):
            v = report["finetuned"].get(key)
            if isinstance(v, (int, float)) and v == v:
                evals.append(EvalResult(task_type="text-generation", task_name="Text generation",
                                        dataset_type=ds_id or "custom", dataset_name=ds_name, dataset_split="validation",
                                        metric_type=key, metric_name=name, metric_value=round(float(v), 4)))
    data = ModelCardData(
        base_model=base, datasets=[ds_id] if ds_id else None, library_name="transformers" if full else "peft",
        model_name=repo_id.split("/")[1], pipeline_tag="text-generation", eval_results=evals or None,
        tags=["fine-tune-studio", cfg.train.method] + (["gguf"] if gguf_files else []) + ([] if full else ["lora"]
                                                                                          if cfg.train.method != "prefix" else []))
    t = cfg.train
    rows = [("method", t.method), ("base model", base or f"{cfg.model.model_id} (not on the Hub)"), ("dataset", ds_name),
            ("learning rate", t.learning_rate), ("epochs", t.epochs), ("max steps", t.max_steps or "-"),
            ("batch size x accumulation", f"{t.batch_size} x {t.grad_accum}"), ("scheduler / warmup", f"{t.lr_scheduler} / {t.warmup_ratio}"),
            ("max sequence length", cfg.data.max_seq_len), ("seed", t.seed)]
    if t.method not in ("full", "prefix"):
        rows += [("LoRA rank / alpha / dropout", f"{cfg.lora.r} / {cfg.lora.alpha} / {cfg.lora.dropout}"),
                 ("target modules", cfg.lora.target_modules)]
    if t.method == "dpo":
        rows.append(("DPO beta", t.dpo_beta))
    lines = [f"# {repo_id.split('/')[1]}", "",
             f"A {t.method} fine-tune of `{base or cfg.model.model_id}` on {ds_name}, made with Fine-Tune Studio "
             f"(run `{run_id}`, {st.get('step')} steps, final training loss {st.get('loss')}).", "",
             "## Training", "", "| setting | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    lines += ["", "![loss curve](loss_curve.png)", ""]
    if report:
        b, f = report.get("base") or {}, report.get("finetuned") or {}
        lines += ["## Evaluation", "", f"On {report.get('examples')} validation examples (see `eval/report.md`).", "",
                  "| metric | base | fine-tuned |", "|---|---|---|",
                  f"| exact match | {b.get('exact_match')} | {f.get('exact_match')} |",
                  f"| perplexity | {b.get('perplexity')} | {f.get('perplexity')} |", ""]
    base_ref = base or "BASE_MODEL"
    lines += ["## How to use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer"]
    if full:
        lines += [f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")',
                  f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")']
    else:
        lines += ["from peft import PeftModel", "", f'base = AutoModelForCausalLM.from_pretrained("{base_ref}")',
                  f'model = PeftModel.from_pretrained(base, "{repo_id}")',
                  f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")']
    lines += ["```", ""]
    if merged:
        lines += ["Merged weights (the adapter folded into the base, safetensors) are in `merged/`:", "", "```python",
                  f'model = AutoModelForCausalLM.from_pretrained("{repo_id}", subfolder="merged")', "```", ""]
    for g in gguf_files or []:
        lines += [f"GGUF for llama.cpp and compatible runtimes: `{g}`. transformers reads it too:", "", "```python",
                  "import os", "from huggingface_hub import hf_hub_download",
                  f'path = hf_hub_download("{repo_id}", "{g}")',
                  "model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))",
                  "```", ""]
    lines += ["## Limitations", "",
              "Trained on a small dataset for a narrow task; check its answers before relying on them. It inherits "
              "the base model's biases and licence."]
    if cfg.model.model_id.startswith("builtin:"):
        lines.append("The base is Fine-Tune Studio's randomly initialised demo model: this repo only demonstrates "
                     "the pipeline and knows nothing else.")
    # Not through a Jinja template: file and dataset names are user input and must stay plain text.
    return str(ModelCard("---\n" + data.to_yaml() + "\n---\n\n" + "\n".join(lines) + "\n"))


def merge_run(run_id: str, out_dir: str | os.PathLike) -> Path:
    """Fold a run's adapter into its base model (merge_and_unload) and save safetensors + tokenizer."""
    import torch

    from .modeling import load_model, load_tokenizer
    from .runs import RunError, artifact_dir, load_config

    cfg, art = load_config(run_id), artifact_dir(run_id)
    if art is None:
        raise RunError(f"run {run_id} has no trained adapter or model yet")
    if art.name != "model" and cfg.train.method == "prefix":
        raise RunError("prefix tuning adds virtual tokens at run time: it cannot be merged into the weights")
    out = Path(out_dir)
    # Written next to its place and moved there whole: a failure leaves no half folder, and no shard of
    # an earlier export into the same folder stays behind.
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if art.name == "model":  # a full fine-tune is already whole
            for p in art.iterdir():
                if p.is_file():
                    shutil.copy2(p, tmp / p.name)
        else:
            from peft import PeftModel

            base = load_model(cfg.model.model_id, dtype="float32", trust_remote_code=cfg.model.trust_remote_code)
            model = PeftModel.from_pretrained(base, str(art)).merge_and_unload()
            with torch.no_grad():
                model.save_pretrained(tmp, safe_serialization=True)
            tok_src = str(art) if (art / "tokenizer_config.json").exists() else cfg.model.model_id
            load_tokenizer(tok_src, trust_remote_code=cfg.model.trust_remote_code).save_pretrained(tmp)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def push_run(run_id: str, repo_id: str, *, token: str | None = None, private: bool = True, merged: bool = False,
             gguf: str | None = None, progress: Progress | None = None, retries: int = 4, backoff_s: float = 2.0) -> dict:
    """Push what a run made to a model repo in one commit; returns {url, commit, files, repo_id, private}."""
    from huggingface_hub import CommitOperationAdd

    from .runs import RunError, artifact_dir, load_config, read_events, read_status, run_dir

    repo_id = validate_repo_id(repo_id)
    from .gguf_export import QTYPES

    if gguf is not None and gguf not in QTYPES:
        raise HubError(f"gguf: {gguf!r} is not supported; choose one of {', '.join(QTYPES)}")
    prog = progress or (lambda f, m: None)
    d = run_dir(run_id)
    cfg, st = load_config(run_id), read_status(run_id)
    art = artifact_dir(run_id)
    if art is None:
        raise RunError(f"run {run_id} has no trained adapter or model yet ({st.get('state')}); wait until it "
                       "completes or stops")
    public_base = hub_model_id(cfg.model.model_id) or (cfg.model.model_id if cfg.model.model_id.startswith("builtin:") else None)
    files: dict[str, bytes | str] = {}
    prog(0.05, "collecting the run's files")
    files.update(_folder_ops(art, "", public_base))
    if (d / "eval" / "report.md").is_file():
        files["eval/report.md"] = str(d / "eval" / "report.md")
    report = read_json(d / "eval" / "report.json", default=None)
    if report is not None:  # paths into this machine's home folder become repo-relative names
        files["eval/report.json"] = (json.dumps(_scrub_paths(report, d), indent=2, default=str) + "\n").encode()
    png = loss_curve_png(read_events(run_id)[0], title=run_id)
    if png:
        files["loss_curve.png"] = png
    cfg_public = cfg.to_dict()
    cfg_public["model"]["model_id"] = public_base or "local model"
    cfg_public["data"]["source"] = _dataset_label(cfg.data.source)[1]
    cfg_public.pop("owner", None)
    files["fine_tune_studio.json"] = (json.dumps(cfg_public, indent=2) + "\n").encode()
    gguf_files: list[str] = []
    with tempfile.TemporaryDirectory(prefix="fts-push-") as tmp:
        merged_dir = None
        if merged or gguf:
            prog(0.15, "merging the adapter into the base model")
            merged_dir = merge_run(run_id, Path(tmp) / "merged")
            if merged and art.name != "model":
                files.update(_folder_ops(merged_dir, "merged/", public_base))
        if gguf:
            from .gguf_export import export_gguf

            prog(0.35, f"writing GGUF ({gguf})")
            # In gguf/: at the root, transformers would see adapter_config.json and load the adapter instead.
            name = f"gguf/{repo_id.split('/')[1]}-{gguf}.gguf"
            export_gguf(merged_dir, Path(tmp) / Path(name).name, gguf)
            files[name] = str(Path(tmp) / Path(name).name)
            gguf_files.append(name)
        files["README.md"] = model_card(run_id, repo_id, merged=merged and art.name != "model",
                                        gguf_files=gguf_files).encode()
        ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=v) for p, v in sorted(files.items())]
        api = _api(token)
        prog(0.5, f"creating {repo_id} ({'private' if private else 'public'}) if needed")
        parent = ensure_repo(api, repo_id, private=private, retries=retries, backoff_s=backoff_s)
        what = "merged model" if art.name == "model" else "adapter"
        extras = (" + merged weights" if merged and art.name != "model" else "") + (f" + GGUF {gguf}" if gguf else "")
        message = f"Fine-Tune Studio: {what}{extras} from run {run_id} (step {st.get('step')})"
        prog(0.6, f"uploading {len(ops)} files in one commit")
        res = commit_once(api, repo_id, ops, message, parent=parent, retries=retries, backoff_s=backoff_s,
                          description=f"{cfg.train.method} on {_dataset_label(cfg.data.source)[1]}; "
                                      f"state {st.get('state')}, loss {st.get('loss')}", progress=prog)
    prog(1.0, "pushed")
    from huggingface_hub import constants

    return {"url": f"{api.endpoint or constants.ENDPOINT}/{repo_id}", "commit": res["commit"], "files": sorted(files),
            "repo_id": repo_id, "private": private, "attempts": res["attempts"]}


# ---------------------------------------------------------------------------------------------
# datasets


def dataset_card(meta: dict, repo_id: str, counts: dict[str, int]) -> str:
    from huggingface_hub import DatasetCard, DatasetCardData

    n = sum(counts.values())
    size = ("n<1K" if n < 1000 else "1K<n<10K" if n < 10_000 else "10K<n<100K" if n < 100_000 else "100K<n<1M")
    data = DatasetCardData(size_categories=[size], tags=["fine-tune-studio", str(meta.get("kind") or "sft")],
                           configs=[{"config_name": "default", "data_files": [
                               {"split": "train", "path": "train.jsonl"},
                               {"split": "validation", "path": "validation.jsonl"}]}])
    cleaning = meta.get("cleaning") or {}
    src = _dataset_label(str(meta.get("source") or ""))[1]
    lines = [f"# {repo_id.split('/')[1]}", "", f"Prepared with Fine-Tune Studio from {src}.", "",
             "| | |", "|---|---|", f"| detected format | {meta.get('format')} |", f"| kind | {meta.get('kind')} |",
             f"| train rows | {counts.get('train', 0)} |", f"| validation rows | {counts.get('validation', 0)} |",
             f"| split seed / validation share | {meta.get('seed')} / {meta.get('val_ratio')} |", "",
             "## Cleaning", "", "| step | rows |", "|---|---|"] + [f"| {k} | {v} |" for k, v in cleaning.items()]
    lines += ["", "Load it with `datasets.load_dataset(\"%s\")`." % repo_id]
    return str(DatasetCard("---\n" + data.to_yaml() + "\n---\n\n" + "\n".join(lines) + "\n"))


def push_dataset(folder: str | os.PathLike, repo_id: str, *, token: str | None = None, private: bool = True,
                 retries: int = 4, backoff_s: float = 2.0, progress: Progress | None = None) -> dict:
    """Push a prepared dataset folder (train.jsonl, validation.jsonl, meta.json) with a dataset card."""
    from huggingface_hub import CommitOperationAdd

    repo_id = validate_repo_id(repo_id)
    d = Path(folder)
    if not d.is_dir() and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", str(folder)) and ".." not in str(folder):
        from .paths import datasets_dir

        d = datasets_dir() / str(folder)  # a saved dataset's name
    if not (d / "train.jsonl").is_file():
        raise HubError(f"{d}: not a prepared dataset (no train.jsonl); prepare it first (python -m finetune data prepare)")
    meta = read_json(d / "meta.json", default={}) or {}
    counts = {}
    files: dict[str, bytes | str] = {}
    for split in ("train", "validation"):
        p = d / f"{split}.jsonl"
        if p.is_file():
            files[f"{split}.jsonl"] = str(p)
            with open(p, "rb") as f:
                counts[split] = sum(1 for line in f if line.strip())
    public_meta = dict(meta)
    public_meta["source"] = _dataset_label(str(meta.get("source") or ""))[1]
    files["meta.json"] = (json.dumps(public_meta, indent=2) + "\n").encode()
    files["README.md"] = dataset_card(meta, repo_id, counts).encode()
    api = _api(token)
    if progress:
        progress(0.3, f"creating dataset repo {repo_id}")
    parent = ensure_repo(api, repo_id, repo_type="dataset", private=private, retries=retries, backoff_s=backoff_s)
    ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=v) for p, v in sorted(files.items())]
    res = commit_once(api, repo_id, ops, f"Fine-Tune Studio: dataset {d.name} ({counts.get('train', 0)} train, "
                      f"{counts.get('validation', 0)} validation rows)", repo_type="dataset", parent=parent,
                      retries=retries, backoff_s=backoff_s, progress=progress)
    from huggingface_hub import constants

    return {"url": f"{api.endpoint or constants.ENDPOINT}/datasets/{repo_id}", "commit": res["commit"],
            "files": sorted(files), "repo_id": repo_id, "private": private, "rows": counts}


# ---------------------------------------------------------------------------------------------
# the Space itself

APP_FILES = ("app.py", "requirements.txt", "space.yaml", "LICENSE")
APP_DIRS = ("finetune", "ui")


def space_front_matter(space_yaml: str | os.PathLike) -> dict:
    """README front matter for the Space from space.yaml (the keys the Hub reads)."""
    import yaml

    cfg = yaml.safe_load(Path(space_yaml).read_text(encoding="utf-8")) or {}
    keep = ("title", "emoji", "colorFrom", "colorTo", "sdk", "sdk_version", "python_version", "app_file",
            "suggested_hardware", "suggested_storage", "hf_oauth", "hf_oauth_scopes", "hf_oauth_expiration_minutes",
            "pinned", "license", "short_description", "tags", "models", "datasets")
    return {k: cfg[k] for k in keep if k in cfg}


def space_files(root: str | os.PathLike) -> dict[str, bytes | str]:
    """The app's files only: app.py, requirements.txt, finetune/, ui/ and a README with front matter.

    Never tests, benchmarks, the home folder, caches or dot-files."""
    import yaml

    root = Path(root)
    files: dict[str, bytes | str] = {}
    for name in APP_FILES:
        if (root / name).is_file():
            files[name] = str(root / name)
    skip_dirs = {"__pycache__", "finetune_home", ".pytest_cache"}
    for top in APP_DIRS:
        for p in sorted((root / top).rglob("*")):
            rel = p.relative_to(root)
            if not p.is_file() or any(part.startswith(".") or part in skip_dirs for part in rel.parts):
                continue
            if p.suffix in (".pyc", ".pyo"):
                continue
            files[rel.as_posix()] = str(p)
    fm: dict = {}
    body = ""
    readme = root / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8")
        if text.startswith("---"):  # keep the README's cosmetic keys (emoji, colours); space.yaml decides the rest
            end = text.find("\n---", 3)
            if end != -1:
                old = yaml.safe_load(text[3:end]) or {}
                fm = {k: v for k, v in old.items() if k in ("emoji", "colorFrom", "colorTo", "pinned", "license",
                                                           "short_description", "thumbnail")}
                text = text[end + 4:].lstrip("\n")
        body = text
    fm.update(space_front_matter(root / "space.yaml"))
    files["README.md"] = ("---\n" + yaml.safe_dump(fm, sort_keys=False) + "---\n\n" + body).encode()
    return files


def deploy_space(space_id: str, *, root: str | os.PathLike | None = None, token: str | None = None,
                 private: bool = False, retries: int = 4, backoff_s: float = 2.0) -> dict:
    """Create or update a Gradio Space with the app's files, in one commit."""
    from huggingface_hub import CommitOperationAdd

    space_id = validate_repo_id(space_id, field="space")
    root = Path(root) if root else Path(__file__).resolve().parent.parent
    files = space_files(root)
    api = _api(token)
    parent = ensure_repo(api, space_id, repo_type="space", private=private, space_sdk="gradio",
                         retries=retries, backoff_s=backoff_s)
    ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=v) for p, v in sorted(files.items())]
    res = commit_once(api, space_id, ops, f"Fine-Tune Studio: deploy the app ({len(files)} files)", repo_type="space",
                      parent=parent, retries=retries, backoff_s=backoff_s)
    import yaml

    settings = yaml.safe_load((root / "space.yaml").read_text(encoding="utf-8")) or {}
    variables = {k: str(v) for k, v in (settings.get("variables") or {}).items() if v not in (None, "")}
    for key, value in variables.items():  # secrets are never sent: the owner sets them in the Space settings
        _call(lambda: api.add_space_variable(space_id, key, value), "set a variable of", space_id,
              retries=retries, backoff_s=backoff_s)
    from huggingface_hub import constants

    return {"url": f"{api.endpoint or constants.ENDPOINT}/spaces/{space_id}", "commit": res["commit"],
            "files": sorted(files), "repo_id": space_id, "variables": sorted(variables),
            "secrets_to_set": list(settings.get("secrets") or [])}

