"""The Train tab's handlers and the pieces behind them (issue 9), without a browser.

- Prepare drops invalid rows and lists them by file line, or refuses in strict mode.
- `train` applies every setting the form shows (the ones "Use this plan" fills included).
- The live view reads events and the log incrementally (by offset), its timer is off when no run
  is active, the chart always carries both series, the runs table has the columns the issue asks for,
  a run can be deleted, and the adapter comes back as a zip Gradio may serve.
"""

import json
import tempfile
import zipfile
from pathlib import Path

import gradio as gr
import pytest

BAD_CSV = 'question,answer\n"What is 2+2?",4\n"Capital of France?",Paris\n"Multi\nline?",yes\n"No answer here",\nLast?,ok\n'


def test_prepare_drops_invalid_rows_and_names_their_lines(tmp_path, home):
    from finetune.data import prepare_dataset
    from ui.dataset_tab import prepare_api

    p = tmp_path / "qa.csv"
    p.write_text(BAD_CSV)
    with pytest.raises(gr.Error, match=r"qa\.csv row 4, field 'answer': is empty"):
        prepare_api(str(p), "", "auto", "", 0.0, 1, "strict-qa", strict=True)
    assert not (home / "datasets" / "strict-qa").exists()
    warned = []
    import ui.dataset_tab as T

    orig, T.gr.Warning = T.gr.Warning, lambda m, *a, **k: warned.append(m)
    try:
        res = prepare_api(str(p), "", "auto", "", 0.0, 1, "loose-qa")
    finally:
        T.gr.Warning = orig
    assert res["rows_train"] == 4 and res["cleaning"]["skipped_invalid"] == 1
    # row 4 starts on line 6: the header is line 1 and row 3 spans lines 4-5
    assert res["cleaning"]["skipped_rows"] == [{"row": 4, "line": 6, "field": "answer", "problem": "is empty"}]
    assert warned == ["Dropped 1 invalid row(s): line 6 (answer): is empty."]
    meta = json.loads((Path(res["dir"]) / "meta.json").read_text())
    assert meta["cleaning"]["skipped_rows"][0]["line"] == 6 and meta["counts"]["skipped"] == 1
    # JSON lines: the line is the file's line, blank lines counted
    jl = tmp_path / "qa.jsonl"
    jl.write_text('{"prompt": "a", "completion": "b"}\n\n{"prompt": "c", "completion": ""}\n')
    res = prepare_dataset(str(jl), str(tmp_path / "out"), on_error="skip", val_ratio=0.0)
    assert res["cleaning"]["skipped_rows"][0] == {"row": 2, "line": 3, "field": "completion", "problem": "is empty"}


def test_picker_follows_prepare_and_upload(tmp_path):
    from ui.dataset_tab import picked, picked_result

    assert picked_result({"dir": "/x/y"}).value == "/x/y"
    p = tmp_path / "u.csv"
    p.write_text(BAD_CSV)
    assert picked(str(p), "builtin:demo").value == str(p)


def test_train_api_applies_every_setting(tiny_model_dir, monkeypatch):
    from finetune import runs
    from ui import train_tab
    from ui.plan_tab import TRAIN_FIELDS

    seen = {}
    monkeypatch.setattr(runs, "start_training", lambda cfg, **kw: seen.setdefault("cfg", cfg) and "rid")
    # every field "Use this plan" fills is an input of the train API
    assert set(TRAIN_FIELDS) - {"lora_rank"} <= set(train_tab.train_api.__wrapped__.__code__.co_varnames)
    train_tab.train_api("builtin:tiny-chat", "builtin:demo", "dora", "3e-4", 2, 4, 128, 8, 0, 0.1, "q_proj,v_proj",
                        2, 0.1, "linear", 0.01, 7, 3, 6, 2, False, 2, True, 0.2, 5, 16, 0.1)
    cfg = seen["cfg"]
    assert (cfg.train.method, cfg.train.learning_rate, cfg.train.epochs, cfg.train.batch_size) == ("dora", 3e-4, 2.0, 4)
    assert (cfg.data.max_seq_len, cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (128, 8, 16, 0.1)
    assert cfg.lora.modules() == ["q_proj", "v_proj"] and cfg.train.grad_accum == 2
    assert (cfg.train.warmup_ratio, cfg.train.lr_scheduler, cfg.train.weight_decay) == (0.1, "linear", 0.01)
    assert (cfg.train.max_steps, cfg.train.eval_steps, cfg.train.save_steps, cfg.train.logging_steps) == (7, 3, 6, 2)
    assert cfg.train.keep_best is False and cfg.train.early_stopping_patience == 2
    assert cfg.train.gradient_checkpointing is True and cfg.data.val_ratio == 0.2 and cfg.train.seed == 5
    with pytest.raises(gr.Error, match="Learning rate: 'fast' is not a number"):
        train_tab.train_api("builtin:tiny-chat", "builtin:demo", "lora", "fast", 1, 8, 256, 16)
    with pytest.raises(gr.Error, match="train.warmup_ratio"):
        train_tab.train_api("builtin:tiny-chat", "builtin:demo", "lora", "2e-3", 1, 8, 256, 16, warmup_ratio=0.9)


def test_learning_rate_widget_offers_common_values():
    from finetune.config import TrainConfig
    from ui.forms import field_input, fmt_lr

    w = field_input(TrainConfig, "learning_rate", 2e-3)
    assert isinstance(w, gr.Dropdown) and w.allow_custom_value and w.value == "2e-3"
    assert [c[0] for c in w.choices][:3] == ["1e-5", "2e-5", "5e-5"]
    assert fmt_lr(0.0002) == "2e-4" and fmt_lr(7e-4) == "0.0007"
    num = field_input(TrainConfig, "warmup_ratio", 0.03)
    assert isinstance(num, gr.Number) and num.step == 0.01  # a ratio steps by 0.01, not by 1


def _fake_run(events=(), state="running", log=""):
    from finetune.config import RunConfig
    from finetune.runs import append_event, create_run, run_dir, update_status

    rid = create_run(RunConfig(name="ui"))
    d = run_dir(rid)
    for e in events:
        append_event(d, e)
    (d / "train.log").write_text(log)
    update_status(d, state=state, step=len(events), total_steps=10, pid=None)
    return rid, d


def test_live_view_reads_incrementally_and_switches_its_timer(home, monkeypatch):
    from finetune import live, runs
    from finetune.runs import append_event, update_status
    from ui import train_live

    rid, d = _fake_run([{"step": 1, "loss": 3.0}], log="starting\nstep 1\n")
    monkeypatch.setattr(runs, "_alive", lambda st, d: True)  # no child: pretend it runs
    out = train_live.poll(rid, {})
    progress, metrics, chart, log, download, timer, shown, table = out
    assert "<progress" in progress and "step 1/10" in progress and timer.active is True
    assert list(chart["series"].unique()) == ["training loss", "validation loss"]  # both, from the first value
    assert log == "starting\nstep 1" and shown == {"n": 1, "state": "running"}
    assert list(table.columns) == train_live.RUN_COLUMNS

    reads = []
    real = live.poll
    monkeypatch.setattr(live, "poll", lambda r, off=0, gen=None: reads.append(off) or real(r, off, gen))
    out = train_live.poll(rid, shown)  # nothing new: chart, log and table are skipped
    assert out[2] == gr.skip() and out[3] == gr.skip() and out[7] == gr.skip()
    append_event(d, {"step": 2, "loss": 2.5, "eval_loss": 2.9, "learning_rate": 1e-3, "grad_norm": 0.5,
                     "tokens_per_s": 1500.0, "mfu": 0.123})
    with open(d / "train.log", "a") as f:
        f.write("step 2\n")
    out = train_live.poll(rid, out[6])
    assert reads[0] == reads[1] > 0 and reads[1] < (d / "events.jsonl").stat().st_size  # from the offset, not 0
    assert len(out[2]) == 3 and out[3].endswith("step 2") and "2.900" in out[1] and "1.00e-03" in out[1]
    assert "1,500" in out[1] and ">MFU<" in out[1] and "12.3%" in out[1]  # the live speed cards
    update_status(d, threads_why="2 of 2 cores: <measured>", prefix_sharing="on: the same 24 tokens")
    out = train_live.poll(rid, out[6])
    assert "Speed: 2 of 2 cores: &lt;measured&gt;; shared prefix on: the same 24 tokens" in out[1]  # escaped
    update_status(d, state="completed", step=10, eta_s=0)
    out = train_live.poll(rid, out[6])
    assert out[5].active is False and "100%" in out[0] and "completed" in out[0]
    assert out[7] is not None and out[4].visible is False  # a run without an adapter offers no download
    assert train_live.poll(None)[5].active is False


def test_curve_keeps_both_series_and_thins_long_runs():
    from ui.train_live import curve

    df = curve([{"step": i, "loss": 1.0} for i in range(1, 2001)])
    assert set(df["series"]) == {"training loss", "validation loss"} and len(df) <= 402
    assert df["value"].isna().sum() == 1 and df["step"].iloc[-2] == 2000


def test_runs_table_delete_and_zip(home, tiny_model_dir):
    from finetune.artifacts import artifact_zip
    from finetune.runs import RunError, delete_run, run_dir
    from ui import train_live

    rid, d = _fake_run([{"step": 1, "loss": 3.0}], state="completed")
    (d / "adapter").mkdir()
    (d / "adapter" / "adapter_config.json").write_text("{}")
    (d / "adapter" / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    frame = train_live.runs_frame()
    row = frame[frame["run"] == rid].iloc[0]
    assert row["state"] == "completed" and row["final loss"] == "n/a" and row["method"] == "lora"
    btn = train_live.download_value(rid)
    path = Path(btn.value["path"] if isinstance(btn.value, dict) else btn.value)
    assert btn.visible is True and path.name == f"{rid}-adapter.zip"
    made = artifact_zip(rid, Path(tempfile.gettempdir()) / "fts-downloads")
    assert made.is_relative_to(Path(tempfile.gettempdir()))  # Gradio serves the temp folder, also on a Space
    assert sorted(zipfile.ZipFile(made).namelist()) == [f"{rid}/adapter/adapter_config.json",
                                                        f"{rid}/adapter/adapter_model.safetensors"]
    active, _ = _fake_run([], state="running")
    with pytest.raises(RunError, match="stop it before deleting"):
        delete_run(active)
    table, picked = train_live.delete(rid)
    assert picked is None and rid not in list(table["run"])
    assert not d.exists() and not any(p.name.startswith(f".{rid}") for p in d.parent.iterdir())
    with pytest.raises(RunError):
        run_dir(rid)


def test_will_train_names_dataset_rows_format_and_model(tmp_path):
    from ui.train_tab import will_train

    s = will_train("builtin:tiny-chat", "builtin:demo")
    assert "builtin:demo" in s and "460 rows" in s and "alpaca" in s and "builtin:tiny-chat" in s
    p = tmp_path / "qa.csv"
    p.write_text(BAD_CSV)
    s = will_train("some/model", str(p))
    assert "qa.csv" in s and "4 rows" in s and "1 invalid rows" in s
