"""Tests for finetune/data/augment.py: seeded paraphrases, the self-instruct parser, deduplication against
existing rows, and the prepared folder augment_dataset writes.

Offline and CPU only; the self-instruct model is builtin:tiny-chat (random weights: its outputs must
all be rejected) or a stand-in that returns canned outputs.
Run: `python -m pytest tests/test_augment.py -q`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from finetune.data import augment as A
from finetune import data as D
from finetune.data import common as C
from finetune.data import DatasetError

DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True)
def fresh_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUNE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_paraphrase_is_seeded_marks_rows_and_keeps_answers(tmp_path):
    src = D.prepare_dataset("builtin:demo", str(tmp_path / "demo"))
    a = A.augment_dataset(src["dir"], str(tmp_path / "aug1"), n=30, seed=3)
    b = A.augment_dataset(src["dir"], str(tmp_path / "aug2"), n=30, seed=3)
    assert a["kept"] == 30 and a["dir"] and a["rows_train"] == src["rows_train"] + 30
    t1 = (Path(a["dir"]) / "train.jsonl").read_text()
    assert t1 == (Path(b["dir"]) / "train.jsonl").read_text()  # same seed, same rows
    train, val, kind = D.load_prepared(a["dir"])
    orig_train, orig_val, _ = D.load_prepared(src["dir"])
    assert val == orig_val and train[:len(orig_train)] == orig_train  # validation stays real
    new = train[len(orig_train):]
    assert all(r["_generated"] == "paraphrase" for r in new)
    answers = {r["messages"][-1]["content"] for r in orig_train}
    assert all(r["messages"][-1]["content"] in answers for r in new)  # answers are never rewritten
    # No generated row repeats an existing one (exact, case/space-insensitive) or another new one.
    seen = {C._norm(C._row_text(r, kind)) for r in orig_train + orig_val}
    texts = [C._norm(C._row_text(r, kind)) for r in new]
    assert not seen & set(texts) and len(set(texts)) == len(texts)
    meta = json.loads((Path(a["dir"]) / "meta.json").read_text())
    assert meta["counts"]["generated"] == 30 and meta["augmentation"]["method"] == "paraphrase"
    assert sorted(os.listdir(a["dir"])) == ["meta.json", "train.jsonl", "validation.jsonl"]
    other = A.augment_dataset(src["dir"], str(tmp_path / "aug3"), n=30, seed=4)
    assert (Path(other["dir"]) / "train.jsonl").read_text() != t1


def test_paraphrase_text_changes_words_not_the_input_paragraph():
    import random
    rng = random.Random(0)
    text = "Classify the sentiment as positive or negative.\n\nThe hotel was brilliant."
    outs = [A.paraphrase_text(text, rng) for _ in range(20)]
    assert all(o.endswith("\n\nThe hotel was brilliant.") for o in outs)
    assert all(o.split("\n\n")[0].lower().rstrip(".") != text.split("\n\n")[0].lower().rstrip(".") for o in outs)


def test_paraphrase_default_folder_from_raw_source_and_dedupe_against_existing(fresh_home):
    res = A.augment_dataset(str(DATA / "ds_classification.csv"), n=5, seed=1)
    assert Path(res["dir"]) == (fresh_home / "datasets" / "ds_classification-aug").resolve()
    assert res["kind"] == "prompt_completion" and res["kept"] <= 5
    assert res["candidates"] == 15 and res["kept"] + res["exact_duplicates"] + res["near_duplicates"] <= 15
    assert res["dir"] in [d["dir"] for d in D.saved_datasets()]


@pytest.mark.parametrize("output, pair", [
    ("Instruction: Name a fruit.\nAnswer: Apple.", ("Name a fruit.", "Apple.")),
    ("1. Question: What is 3 + 4?\n\nResponse: 7\nInstruction: another one\nAnswer: x",
     ("What is 3 + 4?", "7")),
    ('Sure! {"instruction": "Translate cat to French.", "output": "chat"}',
     ("Translate cat to French.", "chat")),
    ("Give a synonym of happy.\nAnswer: glad", ("Give a synonym of happy.", "glad")),
    ("Q: Capital of Peru?\nA: Lima", ("Capital of Peru?", "Lima")),
])
def test_parse_pair_accepts_common_shapes(output, pair):
    assert A.parse_pair(output) == pair


@pytest.mark.parametrize("output", [
    "", "   ", "Answer: only an answer", "Instruction: no answer here",
    "Instruction: ok\nAnswer: ok", "Instruction: ��� ### @@@\nAnswer: ##", "<|im_end|> the the the",
    "Instruction: Name it.\nAnswer: Instruction: nested\nAnswer: x",
])
def test_parse_pair_rejects_garbage(output):
    assert A.parse_pair(output) is None


def test_self_instruct_keeps_parsed_unique_rows(monkeypatch, tmp_path):
    canned = iter([
        "Instruction: Name a large ocean.\nAnswer: The Pacific.",
        "complete garbage ### ###",
        "Instruction: What is the capital of France?\nAnswer: Paris",  # repeats a demo row
        "Instruction: Name a large ocean.\nAnswer: The Pacific.",      # repeats an earlier output
        '{"question": "Spell the word cat backwards.", "answer": "tac"}',
    ])
    seen_prompts = []

    def fake_generate(model_id, prompts, max_new_tokens):
        seen_prompts.extend(prompts)
        return [next(canned) for _ in prompts]

    monkeypatch.setattr(A, "_generate", fake_generate)
    res = A.augment_dataset("builtin:demo", str(tmp_path / "si"), method="self_instruct", n=5, seed=0, k=2)
    assert (res["candidates"], res["unparseable"], res["kept"]) == (5, 1, 2)
    assert res["exact_duplicates"] == 2
    assert "Instruction:" in seen_prompts[0] and seen_prompts[0].count("\nAnswer: ") == 2
    assert len(set(seen_prompts)) > 1  # different seed rows per prompt
    train, _, _ = D.load_prepared(res["dir"])
    new = [r for r in train if r.get("_generated")]
    assert [r["messages"][0]["content"] for r in new] == ["Name a large ocean.", "Spell the word cat backwards."]
    assert all(r["_generated"] == "self-instruct" for r in new)
    assert json.loads((Path(res["dir"]) / "meta.json").read_text())["augmentation"]["model"] == "builtin:tiny-chat"


def test_self_instruct_with_the_random_builtin_model_rejects_everything(tiny_model_dir, tmp_path):
    res = A.augment_dataset("builtin:demo", str(tmp_path / "si"), method="self-instruct", n=2, max_new_tokens=16)
    assert res["candidates"] == 2 and res["kept"] == 0 and res["unparseable"] == 2
    assert res["dir"] is None and "nothing was written" in res["message"]
    assert not (tmp_path / "si").exists()


def test_augment_bad_arguments():
    def err(**kw):
        with pytest.raises(DatasetError) as e:
            A.augment_dataset(kw.pop("source", "builtin:demo"), **kw)
        return str(e.value)

    assert "method must be one of" in err(method="backtranslate")
    assert "n must be a whole number" in err(n=0)
    assert "n must be a whole number" in err(n=10**6)
    assert "dataset name" in err(name="../x")
    assert "self-instruct needs instruction rows" in err(source=str(DATA / "ds_preference.jsonl"),
                                                          method="self_instruct")
