"""Every dataset dialect users write, read with its fields kept: one file of our own making per dialect
under tests/data/dialects/. Detection names the dialect, every row converts, labels/tools/reasoning
survive, the rows tokenize (or reach TRL's preference/KTO forms), and a multimodal file gets a clear word."""

from pathlib import Path

import pytest

DIALECTS = Path(__file__).parent / "data" / "dialects"

# file -> (format, kind, usable rows, words the evidence must contain)
CASES = {
    "sharegpt_tools.jsonl": ("sharegpt", "messages", 3, ["ShareGPT", "function_call", "observation", "tools column"]),
    "sharegpt_preference.jsonl": ("preference", "preference", 4, ["ShareGPT-style preference"]),
    "kto_messages.jsonl": ("kto", "kto", 3, ["KTO as a conversation", "'label'"]),
    "kto_tag.jsonl": ("kto", "kto", 2, ["KTO as a conversation", "'kto_tag'"]),
    "content_parts.jsonl": ("messages", "messages", 3, ["list of parts"]),
    "reasoning.jsonl": ("messages", "messages", 3, ["reasoning in 3 rows"]),
    "chosen_rejected_messages.jsonl": ("preference", "preference", 2, ["chosen_messages/rejected_messages"]),
    "openai_tools.jsonl": ("messages", "messages", 2, ["OpenAI chat", "tool calls in 1 rows", "tools column"]),
    "trl_conversational.jsonl": ("prompt_completion", "prompt_completion", 2, ["TRL conversational prompt/completion"]),
    "trl_conv_preference.jsonl": ("preference", "preference", 2, ["TRL conversational preference"]),
    "trl_conv_kto.jsonl": ("kto", "kto", 2, ["TRL KTO"]),
    "alpaca_history.jsonl": ("alpaca", "messages", 3, ["Alpaca with history"]),
}


def _read(name):
    from finetune.data import detect_format, load_records, to_canonical

    recs = load_records(str(DIALECTS / name))
    det = detect_format(recs)
    rows, kind, skipped = to_canonical(recs, source=name, on_error="skip", return_skipped=True)
    return det, rows, kind, skipped


@pytest.mark.parametrize("name", sorted(CASES))
def test_dialect_is_detected_named_and_fully_read(name):
    fmt, kind, n, words = CASES[name]
    det, rows, got_kind, skipped = _read(name)
    assert (det.format, got_kind, det.confidence) == (fmt, kind, 1.0), det.evidence
    assert len(rows) == n and not skipped, [str(e) for e in skipped]
    text = " ".join(det.evidence)
    assert all(w in text for w in words), det.evidence


def test_fields_are_kept():
    _, rows, _, _ = _read("sharegpt_tools.jsonl")
    call = rows[0]["messages"][2]
    assert call["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Oslo"}}
    assert rows[0]["messages"][3]["role"] == "tool" and rows[0]["tools"] and rows[0]["messages"][0]["role"] == "system"
    _, rows, _, _ = _read("kto_messages.jsonl")
    assert [r["label"] for r in rows] == [True, False, True]
    assert rows[2]["prompt"][0] == {"role": "system", "content": "Answer in one word."}
    assert rows[1]["completion"] == [{"role": "assistant", "content": "bird"}]
    _, rows, _, _ = _read("kto_tag.jsonl")
    assert [r["label"] for r in rows] == [True, False] and rows[0]["prompt"] == [{"role": "user", "content": "Is 7 prime?"}]
    _, rows, _, _ = _read("sharegpt_preference.jsonl")
    assert rows[1] == {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
                       "chosen": [{"role": "assistant", "content": "4"}], "rejected": [{"role": "assistant", "content": "22"}]}
    _, rows, _, _ = _read("content_parts.jsonl")
    assert rows[0]["messages"] == [{"role": "user", "content": "What is 3 x 4?"}, {"role": "assistant", "content": "12"}]
    _, rows, _, _ = _read("reasoning.jsonl")
    assert [r["messages"][1]["reasoning_content"] for r in rows] == ["15 = 3 x 5.", "10 / 2 = 5.", "A, B, C."]
    assert [r["messages"][1]["content"] for r in rows] == ["Yes.", "5", "C"]
    _, rows, _, _ = _read("chosen_rejected_messages.jsonl")
    assert rows[0]["prompt"] == [{"role": "user", "content": "Best tool for nails?"}]
    assert rows[0]["chosen"][0]["content"] == "A hammer." and rows[0]["rejected"][0]["content"] == "A spoon."
    _, rows, _, _ = _read("alpaca_history.jsonl")
    assert [m["role"] for m in rows[0]["messages"]] == ["user", "assistant", "user", "assistant"]


def test_multimodal_rows_are_refused_by_name_and_the_file_is_warned_about():
    det, rows, _, skipped = _read("multimodal.jsonl")
    assert any(e.startswith("WARNING: 2 rows hold images") for e in det.evidence)
    assert len(rows) == 1 and rows[0]["messages"][0]["content"].startswith("No picture")
    assert [(e.row, e.field) for e in skipped] == [(1, "images"), (2, "content")]
    assert all("text-only" in str(e) for e in skipped)
    from finetune.data import DatasetError, load_records, to_canonical

    with pytest.raises(DatasetError, match="row 1.*images.*text-only"):
        to_canonical(load_records(str(DIALECTS / "multimodal.jsonl")), source="multimodal.jsonl")
    only_token = [{"instruction": "Describe <image> briefly.", "output": "A tree."},
                  {"instruction": "Name a tree.", "output": "Oak."}]
    rows, _, skipped = to_canonical(only_token, on_error="skip", return_skipped=True)
    assert len(rows) == 1 and "<image> token" in str(skipped[0])


def test_dialects_tokenize_and_reach_trl_forms(tiny_tokenizer):
    from trl.data_utils import is_conversational, maybe_apply_chat_template

    from finetune.tokenize import tokenize_rows

    for name in ("sharegpt_tools.jsonl", "content_parts.jsonl", "reasoning.jsonl", "openai_tools.jsonl",
                 "trl_conversational.jsonl", "alpaca_history.jsonl"):
        _, rows, kind, _ = _read(name)
        ex, stats = tokenize_rows(tiny_tokenizer, rows, kind, 256)
        assert len(ex) == len(rows) and stats["trained_tokens"] > 0, name
    _, rows, _, _ = _read("openai_tools.jsonl")
    _, stats = tokenize_rows(tiny_tokenizer, rows, "messages", 256)
    assert any("does not render tools" in n for n in stats["notes"])  # said, not silently lost
    for name in ("sharegpt_preference.jsonl", "chosen_rejected_messages.jsonl", "kto_messages.jsonl", "kto_tag.jsonl"):
        _, rows, _, _ = _read(name)
        for r in rows:
            assert is_conversational(r)
            out = maybe_apply_chat_template(r, tiny_tokenizer)
            assert out["prompt"] and (out.get("chosen") or out.get("completion")), name


def test_a_template_that_renders_tools_and_reasoning_trains_them(tiny_tokenizer):
    import copy

    from finetune.tokenize import render_trained_tokens, tokenize_rows

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = (
        "{% if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m.get('reasoning_content') %}<think>{{ m['reasoning_content'] }}</think>{% endif %}"
        "{% if m.get('tool_calls') %}{{ m['tool_calls'] | tojson }}{% endif %}{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    _, rows, _, _ = _read("reasoning.jsonl")
    _, stats = tokenize_rows(tok, rows, "messages", 256)
    assert not stats["notes"]
    trained = "".join(t for t, on in render_trained_tokens(tok, rows[1], "messages", 256) if on)
    assert "10 / 2 = 5." in trained and trained.rstrip().endswith("5<|im_end|>")
    _, rows, _, _ = _read("openai_tools.jsonl")
    text = "".join(t for t, _ in render_trained_tokens(tok, rows[0], "messages", 256))
    assert "Tools:" in text and '"name": "add"' in text


@pytest.mark.parametrize("prompt_col,answer_col", [("input", "output"), ("query", "response"), ("user", "assistant")])
def test_plain_question_answer_columns_users_write(prompt_col, answer_col):
    from finetune.data import detect_format, to_canonical

    recs = [{prompt_col: "Capital of Peru?", answer_col: "Lima"}, {prompt_col: "2 + 2?", answer_col: "4"}]
    det = detect_format(recs)
    assert det.format == "prompt_completion" and det.confidence == 1.0
    rows, kind = to_canonical(recs)
    assert kind == "prompt_completion" and rows[0] == {"prompt": "Capital of Peru?", "completion": "Lima"}
