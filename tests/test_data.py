"""Tests for finetune/data/, the dataset engine: loading, format detection, conversion to TRL's
forms, error messages, cleaning report, token statistics, splitting and prepared folders.

Offline and CPU only; fixtures are small files under tests/data/ds_* plus files written to tmp_path.
Run: `python -m pytest tests/test_data.py -q`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest

from finetune import data as D
from finetune.data import prepare as P, quality as Q, tokens as T
from finetune.data import DatasetError

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fresh_home(tmp_path, monkeypatch):
    """Each test gets its own FINETUNE_HOME, so prepared datasets never leak between tests."""
    monkeypatch.setenv("FINETUNE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    """The builtin:tiny-chat tokenizer (tiny_model_dir is the session build from conftest.py)."""
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def write(path: Path, content: str | bytes) -> str:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


def jsonl(path: Path, rows: list) -> str:
    return write(path, "".join(json.dumps(r) + "\n" for r in rows))


def convert(source: str, **kw):
    records = D.load_records(source)
    det = D.detect_format(records)
    rows, kind = D.to_canonical(records, source=source, **kw)
    return det, rows, kind


# ---------------------------------------------------------------------------------------------
# Formats: detection and conversion from real files


def test_alpaca_jsonl_empty_input_system_and_history():
    det, rows, kind = convert(str(DATA / "ds_alpaca.jsonl"))
    assert (det.format, det.confidence, kind) == ("alpaca", 1.0, "messages")
    assert det.evidence[0] == "4/4 rows have 'instruction' and 'output'"
    assert rows[0]["messages"] == [
        {"role": "user", "content": "Give three tips for staying healthy."},
        {"role": "assistant", "content": "1. Eat a balanced diet.\n2. Exercise regularly.\n"
                                         "3. Sleep seven to nine hours."}]
    assert rows[1]["messages"][0]["content"] == ("Translate the sentence into French.\n\n"
                                                 "The cat sleeps on the sofa.")
    assert rows[2]["messages"][0] == {"role": "system", "content": "You are a concise assistant."}
    assert [m["role"] for m in rows[3]["messages"]] == ["user", "assistant", "user", "assistant"]
    assert rows[3]["messages"][0]["content"] == "What is 1 + 1?"


def test_alpaca_json_array():
    det, rows, kind = convert(str(DATA / "ds_alpaca_array.json"))
    assert det.format == "alpaca" and kind == "messages" and len(rows) == 3
    assert rows[1]["messages"][0]["content"] == "Convert to uppercase.\n\nhello world"


def test_json_object_of_columns_prompt_completion():
    det, rows, kind = convert(str(DATA / "ds_columns.json"))
    assert det.format == "prompt_completion" and kind == "prompt_completion"
    assert rows[1] == {"prompt": "The capital of Japan is", "completion": " Tokyo"}


def test_json_wrapper_object_with_rows(tmp_path):
    p = write(tmp_path / "wrapped.json", json.dumps({"data": [{"text": "a b c"}, {"text": "d"}]}))
    assert D.load_records(p) == [{"text": "a b c"}, {"text": "d"}]


def test_sharegpt_system_roles_function_call_and_observation():
    det, rows, kind = convert(str(DATA / "ds_sharegpt.json"))
    assert det.format == "sharegpt" and kind == "messages" and det.confidence == 1.0
    first = rows[0]["messages"]
    assert [m["role"] for m in first] == ["system", "user", "assistant", "user", "assistant"]
    assert first[0]["content"] == "You are a friendly travel guide."
    second = rows[1]["messages"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "tool", "assistant"]
    assert second[0]["content"] == "You can call tools."  # top-level 'system' becomes a turn
    assert second[2]["tool_calls"][0]["function"] == {"name": "get_weather",
                                                      "arguments": {"city": "Paris"}}
    assert second[3]["content"] == '{"temp_c": 18, "sky": "cloudy"}'
    assert rows[1]["tools"][0]["name"] == "get_weather"


def test_openai_messages_with_tool_calls_kept():
    det, rows, kind = convert(str(DATA / "ds_messages.jsonl"))
    assert det.format == "messages" and kind == "messages"
    tool_row = rows[1]["messages"]
    assert tool_row[1]["role"] == "assistant" and tool_row[1]["content"] == ""
    assert tool_row[1]["tool_calls"][0]["function"]["name"] == "calculator"
    assert tool_row[2] == {"role": "tool", "content": "391", "tool_call_id": "call_1"}
    assert rows[0]["messages"][0]["role"] == "system" and len(rows[0]["messages"]) == 5


def test_preference_with_message_lists():
    det, rows, kind = convert(str(DATA / "ds_preference.jsonl"))
    assert det.format == "preference" and kind == "preference"
    assert rows[1]["prompt"][0] == {"role": "system", "content": "Be polite."}
    assert rows[0]["chosen"] == [{"role": "assistant",
                                  "content": "No, the Earth is an oblate spheroid."}]


def test_preference_implicit_prompt_is_extracted():
    det, rows, kind = convert(str(DATA / "ds_preference_implicit.jsonl"))
    assert det.format == "preference"
    assert rows[0]["prompt"] == [{"role": "user", "content": "What colour is the sky?"}]
    assert rows[0]["rejected"] == [{"role": "assistant", "content": "Green."}]


def test_preference_implicit_prompt_strings(tmp_path):
    p = jsonl(tmp_path / "hh.jsonl", [{"chosen": "Human: hi\n\nAssistant: Hello there!",
                                       "rejected": "Human: hi\n\nAssistant: Go away."}])
    _, rows, kind = convert(p)
    assert kind == "preference"
    assert rows[0]["prompt"] == "Human: hi\n\nAssistant:"
    assert rows[0]["chosen"] == " Hello there!"


def test_kto():
    det, rows, kind = convert(str(DATA / "ds_kto.jsonl"))
    assert det.format == "kto" and kind == "kto"
    assert rows[1] == {"prompt": "What is the capital of Italy?", "completion": "Milan.",
                       "label": False}


def test_classification_csv():
    det, rows, kind = convert(str(DATA / "ds_classification.csv"))
    assert det.format == "classification" and kind == "prompt_completion"
    assert rows[0] == {"prompt": "The food was great, and the staff were lovely.",
                       "completion": "positive"}


def test_prompt_completion_tsv():
    det, rows, kind = convert(str(DATA / "ds_prompt_completion.tsv"))
    assert det.format == "prompt_completion" and len(rows) == 3
    assert rows[1] == {"prompt": "Translate to German: thank you", "completion": "Danke"}


def test_prompt_completion_message_lists_stay_prompt_completion(tmp_path):
    p = jsonl(tmp_path / "pc.jsonl", [{"prompt": [{"role": "user", "content": "Hi"}],
                                       "completion": [{"role": "assistant", "content": "Hello"}]}])
    _, rows, kind = convert(p)
    assert kind == "prompt_completion"  # not concatenated into messages: masking needs the split
    assert rows[0]["completion"] == [{"role": "assistant", "content": "Hello"}]


def test_txt_paragraphs_and_lines(tmp_path):
    det, rows, kind = convert(str(DATA / "ds_text.txt"))
    assert det.format == "text" and kind == "text" and len(rows) == 2
    assert rows[0]["text"].count("\n") == 1
    p = write(tmp_path / "lines.txt", "one line\n\ntwo line\n\n\nthree line\n")
    assert [r["text"] for r in D.load_records(p)] == ["one line", "two line", "three line"]
    p = write(tmp_path / "plain.txt", "one line\ntwo line\n")
    assert [r["text"] for r in D.load_records(p)] == ["one line", "two line"]


def test_parquet_written_with_pyarrow(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    table = pa.Table.from_pylist([
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}]},
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
    ])
    pq.write_table(table, tmp_path / "chat.parquet")
    det, rows, kind = convert(str(tmp_path / "chat.parquet"))
    assert det.format == "messages" and kind == "messages"
    assert rows[1]["messages"][1] == {"role": "assistant", "content": "4"}


def test_sniff_jsonl_inside_json_and_no_extension(tmp_path):
    det, rows, kind = convert(str(DATA / "ds_jsonl_in.json"))
    assert det.format == "text" and len(rows) == 2
    p = write(tmp_path / "noext", '[{"prompt": "a", "completion": "b"}]')
    assert D.load_records(p) == [{"prompt": "a", "completion": "b"}]
    p2 = write(tmp_path / "array.jsonl", '[{"text": "x"}, {"text": "y"}]')
    assert len(D.load_records(p2)) == 2


def test_csv_messages_column_as_json_text(tmp_path):
    msgs = json.dumps([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}])
    p = write(tmp_path / "chat.csv", 'id,messages\n1,"' + msgs.replace('"', '""') + '"\n')
    det, rows, kind = convert(p)
    assert det.format == "messages" and rows[0]["messages"][1]["content"] == "Yo"


def test_dolly_style_aliases_and_explicit_mapping(tmp_path):
    p = jsonl(tmp_path / "dolly.jsonl", [{"instruction": "Sum up", "context": "Long text.",
                                          "response": "Short."}])
    det, rows, _ = convert(p)
    assert det.format == "alpaca"
    assert "using column 'response' as 'output'" in det.evidence
    assert rows[0]["messages"][0]["content"] == "Sum up\n\nLong text."
    q = jsonl(tmp_path / "qa.jsonl", [{"question": "Why?", "answer": "Because.", "id": 1}])
    rows, kind = D.to_canonical(D.load_records(q), "alpaca",
                                {"instruction": "question", "output": "answer"})
    assert rows[0]["messages"] == [{"role": "user", "content": "Why?"},
                                   {"role": "assistant", "content": "Because."}]


def test_builtin_demo_inspects_as_alpaca_and_converts_to_messages():
    report = D.inspect_dataset("builtin:demo")
    assert report["format"] == "alpaca" and report["confidence"] == 1.0
    assert report["kind"] == "messages" and report["rows"] == report["rows_valid"] > 100
    assert report["preview"][0]["messages"][-1]["role"] == "assistant"
    assert 0 <= report["quality_score"] <= 100 and report["quality_reasons"]
    assert report["token_stats"]["approximate"] is True
    json.dumps(report)  # JSON-serialisable for the API


def test_builtin_persona_is_chat_with_every_question_worded_once():
    from finetune.builtin import GENERAL_QA, PERSONA_NAME, persona_records

    rows = D.load_records("builtin:persona")
    assert rows == persona_records() and len(rows) == 96  # deterministic
    questions = [r["messages"][0]["content"] for r in rows]
    assert len(set(questions)) == len(questions)  # a validation split only asks unseen questions
    named = [r for r in rows if PERSONA_NAME in r["messages"][1]["content"]]
    assert len(named) == len(rows) - len(GENERAL_QA)  # the plain answers never introduce the persona
    report = D.inspect_dataset("builtin:persona")
    assert report["format"] == "messages" and report["rows_valid"] == 96
    with pytest.raises(DatasetError, match="builtin:demo.*builtin:persona"):
        D.load_records("builtin:nope")


# ---------------------------------------------------------------------------------------------
# Bad inputs: every message names the file and the line/row and/or field


def err(fn, *args, **kw) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        fn(*args, **kw)
    return info.value


def test_bad_malformed_jsonl_line(tmp_path):
    p = write(tmp_path / "bad.jsonl", '{"text": "a"}\n{"text": "b"}\n{"text": "c",,}\n')
    e = err(D.load_records, p)
    assert str(e).startswith("bad.jsonl line 3: invalid JSON (") and e.line == 3


def test_bad_jsonl_line_not_an_object(tmp_path):
    p = write(tmp_path / "bad.jsonl", '{"text": "a"}\n[1, 2]\n')
    assert str(err(D.load_records, p)) == ("bad.jsonl line 2: expected a JSON object per line, "
                                           "got a list")


def test_bad_json_array_reports_line_and_column(tmp_path):
    p = write(tmp_path / "bad.json", '[\n  {"text": "a"},\n  {"text": "b"\n]\n')
    e = err(D.load_records, p)
    assert str(e).startswith("bad.json line 4: invalid JSON (") and "column" in str(e)


def test_bad_non_utf8_bytes(tmp_path):
    p = write(tmp_path / "latin.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    e = err(D.load_records, p)
    assert str(e).startswith("latin.jsonl line 2: not valid UTF-8 (byte 0xe9 at byte offset 28")


def test_bad_binary_file(tmp_path):
    p = write(tmp_path / "blob.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00\x00")
    e = err(D.load_records, p)
    assert "blob.jsonl line 3: binary file (NUL byte at byte offset 8)" in str(e)


def test_bad_utf16_file(tmp_path):
    p = write(tmp_path / "wide.json", '[{"text": "a"}]'.encode("utf-16"))
    assert "wide.json: file is UTF-16 encoded" in str(err(D.load_records, p))


def test_bad_empty_and_whitespace_files(tmp_path):
    assert str(err(D.load_records, write(tmp_path / "e.jsonl", ""))) == \
        "e.jsonl: file is empty (0 bytes)"
    assert "w.jsonl: file has only whitespace" in str(err(D.load_records,
                                                         write(tmp_path / "w.jsonl", "\n \n")))


def test_bad_file_over_size_limit(tmp_path):
    p = write(tmp_path / "big.jsonl", '{"text": "' + "x" * 100 + '"}\n')
    e = err(D.load_records, p, max_bytes=50)
    assert str(e).startswith("big.jsonl: file is 113 bytes, over the limit of 50 bytes")


def test_bad_missing_file_and_folder(tmp_path):
    assert "nope.jsonl: file not found" in str(err(D.load_records, str(tmp_path / "nope.jsonl")))
    (tmp_path / "adir").mkdir()
    assert "adir: is a folder" in str(err(D.load_records, str(tmp_path / "adir")))


def test_bad_unsupported_extensions(tmp_path):
    e = err(D.load_records, write(tmp_path / "sheet.xlsx", b"PK\x03\x04junk"))
    assert "sheet.xlsx: unsupported file type '.xlsx'" in str(e) and ".jsonl" in str(e)
    e = err(D.load_records, write(tmp_path / "notes.dat", "just some words"))
    assert "notes.dat: unsupported file type '.dat'" in str(e) and ".parquet" in str(e)


def test_bad_csv_ragged_row(tmp_path):
    p = write(tmp_path / "r.csv", "text,label\nhello,1\nbad,row,extra\n")
    assert str(err(D.load_records, p)) == ("r.csv line 3: 3 fields, expected 2 "
                                           "(header: text, label)")


def test_bad_csv_duplicate_header(tmp_path):
    e = err(D.load_records, write(tmp_path / "d.csv", "text,text\na,b\n"))
    assert str(e) == "d.csv line 1, field 'text': duplicate column name 'text' in the header"


def test_bad_json_unequal_columns_and_single_object(tmp_path):
    e = err(D.load_records, write(tmp_path / "c.json", '{"prompt": ["a", "b"], "completion": ["x"]}'))
    assert "c.json: object of columns with unequal lengths ('prompt' has 2, 'completion' has 1)" \
        == str(e)
    e = err(D.load_records, write(tmp_path / "o.json", '{"prompt": "a", "completion": "b"}'))
    assert str(e).startswith("o.json, field 'prompt': a single JSON object")


def test_bad_json_array_of_non_objects(tmp_path):
    e = err(D.load_records, write(tmp_path / "a.json", '[{"text": "a"}, "b"]'))
    assert str(e) == "a.json row 2: array item 2 is a string; expected an array of objects"


def test_bad_missing_field(tmp_path):
    p = jsonl(tmp_path / "m.jsonl", [{"instruction": "a", "output": "b"},
                                     {"instruction": "c", "output": None}])
    e = err(convert, p, fmt="alpaca")
    assert str(e) == "m.jsonl row 2, field 'output': is null" and (e.row, e.field) == (2, "output")


def test_bad_wrong_type(tmp_path):
    p = jsonl(tmp_path / "t.jsonl", [{"instruction": "a", "output": ["b"]}])
    assert str(err(convert, p)) == "t.jsonl row 1, field 'output': expected a string, got a list"


def test_bad_empty_field(tmp_path):
    p = jsonl(tmp_path / "t.jsonl", [{"prompt": "a", "completion": "b"},
                                     {"prompt": "c", "completion": "   "}])
    assert str(err(convert, p)) == "t.jsonl row 2, field 'completion': is empty"


def test_bad_unknown_format_names_columns(tmp_path):
    p = jsonl(tmp_path / "u.jsonl", [{"foo": 1, "bar": "x"}])
    e = err(convert, p)
    assert "u.jsonl: could not tell the dataset format; columns found: foo, bar" in str(e)
    assert "alpaca" in str(e) and "classification" in str(e)
    det = D.detect_format(D.load_records(p))
    assert det.format == "unknown" and "foo, bar" in det.evidence[0]
    assert "format" in str(err(D.to_canonical, [{"text": "a"}], "nonsense"))


def test_bad_role_order_two_user_turns(tmp_path):
    p = jsonl(tmp_path / "r.jsonl", [{"messages": [{"role": "user", "content": "a"},
                                                   {"role": "user", "content": "b"}]}])
    assert str(err(convert, p)) == "r.jsonl row 1, field 'messages[1]': two user messages in a row"


def test_bad_conversation_not_ending_with_assistant(tmp_path):
    p = jsonl(tmp_path / "r.jsonl", [
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                      {"role": "user", "content": "c"}]}])
    e = err(convert, p)
    assert str(e).startswith("r.jsonl row 2, field 'messages[2]': conversation ends with a user")


def test_bad_unknown_role(tmp_path):
    p = jsonl(tmp_path / "r.jsonl", [{"conversations": [{"from": "narrator", "value": "a"}]}])
    e = err(convert, p, fmt="sharegpt")
    assert str(e).startswith("r.jsonl row 1, field 'conversations[0].from': unknown role 'narrator'")


def test_bad_kto_label(tmp_path):
    p = jsonl(tmp_path / "k.jsonl", [{"prompt": "a", "completion": "b", "label": "maybe"}])
    assert str(err(convert, p, fmt="kto")) == ("k.jsonl row 1, field 'label': expected true or "
                                               "false, got 'maybe'")


def test_bad_mixed_schemas(tmp_path):
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(8)]
    rows[5] = {"prompt": "p", "completion": "c"}
    p = jsonl(tmp_path / "mix.jsonl", rows)
    det = D.detect_format(D.load_records(p))
    assert det.format == "alpaca" and det.confidence == 0.875
    assert "1 row match prompt_completion: rows 6 (keys: prompt, completion)" in det.evidence
    e = err(convert, p)
    assert str(e) == "mix.jsonl row 6, field 'output': missing"


def test_bad_mapping_column(tmp_path):
    p = jsonl(tmp_path / "q.jsonl", [{"question": "a", "answer": "b"}])
    e = err(D.to_canonical, D.load_records(p), "alpaca", {"instruction": "query"}, source=p)
    assert str(e) == "q.jsonl, field 'instruction': mapping: column 'query' not found; columns: " \
                     "question, answer"


def test_bad_preference_mixed_forms(tmp_path):
    p = jsonl(tmp_path / "pref.jsonl", [
        {"prompt": [{"role": "user", "content": "a"}], "chosen": "x", "rejected": "y"},
        {"prompt": [{"role": "user", "content": "b"}], "chosen": "x", "rejected": "y"},
        {"prompt": "c", "chosen": "x", "rejected": "y"}])
    e = err(convert, p)
    assert str(e).startswith("pref.jsonl row 3, field 'prompt': is a string while most rows use "
                             "message lists")


def test_skip_mode_counts_dropped_rows(tmp_path):
    recs = [{"prompt": "a", "completion": "b"}, {"prompt": "a", "completion": ""},
            {"prompt": "c", "completion": 5}, {"prompt": "d"}]
    rows, kind, skipped = D.to_canonical(recs, on_error="skip", return_skipped=True)
    assert len(rows) == 2 and kind == "prompt_completion"
    assert [(e.row, e.field, e.rule) for e in skipped] == [(2, "completion", "empty_field"),
                                                           (4, "completion", "invalid_row")]
    assert rows[1] == {"prompt": "c", "completion": "5"}  # numbers are accepted as text


def test_inspect_reports_bad_rows_and_unknown_format(tmp_path):
    p = jsonl(tmp_path / "x.jsonl", [{"instruction": f"Question {i}?", "output": f"Answer {i}."}
                                     for i in range(5)] + [{"instruction": "q", "output": ""}])
    rep = D.inspect_dataset(p)
    assert rep["rows"] == 6 and rep["rows_valid"] == 5
    issue = next(i for i in rep["issues"] if i["rule"] == "empty_field")
    assert issue["examples"] == ["row 6: output: is empty"]
    # After a dropped row, examples still use the source's row numbers.
    q = jsonl(tmp_path / "y.jsonl", [{"text": "ok"}, {"text": ""}, {"text": "dup"},
                                     {"text": "dup"}])
    dup = next(i for i in D.inspect_dataset(q)["issues"] if i["rule"] == "exact_duplicate")
    assert dup["examples"][0].startswith("row 4 repeats row 3")
    u = D.inspect_dataset(jsonl(tmp_path / "u.jsonl", [{"foo": "a"}]))
    assert u["format"] == "unknown" and u["kind"] is None and u["columns"] == ["foo"]
    with pytest.raises(DatasetError):
        D.inspect_dataset(str(tmp_path / "missing.jsonl"))


def test_bad_hub_source_offline_is_a_dataset_error():
    e = err(D.load_records, "hub:someone/does-not-exist:train")
    assert str(e).startswith("hub:someone/does-not-exist:train: could not load "
                             "'someone/does-not-exist'")


# ---------------------------------------------------------------------------------------------
# Cleaning report, token stats


def rule(issues, name):
    return next((i for i in issues if i["rule"] == name), None)


def test_clean_report_duplicates_pii_whitespace_overlap():
    base = ("the committee met on tuesday to review the annual budget and agreed to fund the new "
            "library the park renovation and three community programs for young readers in town")
    rows = [{"text": base},
            {"text": base},                                   # exact duplicate of row 1
            {"text": base.replace("readers in town", "readers in the town")},  # near duplicate
            {"text": "Contact me at jane.doe@example.com please"},
            {"text": "Call +1 415-555-0172 after six"},
            {"text": "token hf_abcdefghijklmnopqrstuvwxyz0123456789AB leaked"},
            {"text": "  padded text  "},
            {"text": "double  spaced words"},
            {"text": "completely different sentence about cooking pasta at home"}]
    issues = D.clean_report(rows, "text", validation=[{"text": "Double  spaced   WORDS"},
                                                      {"text": "unseen"}])
    assert rule(issues, "exact_duplicate")["count"] == 1
    assert rule(issues, "exact_duplicate")["examples"][0].startswith("row 2 repeats row 1")
    near = rule(issues, "near_duplicate")
    assert near["count"] == 1 and near["examples"][0].startswith("row 3 ≈ row 1")
    pii = rule(issues, "pii")
    assert pii["count"] == 3
    text = json.dumps(pii)
    assert "j***@example.com" in text and "jane.doe" not in text
    assert "hf_abcdefghijklmnop" not in text  # secrets are masked in the report
    ws = rule(issues, "whitespace")
    assert ws["count"] == 2 and ws["examples"][0].startswith("row 7: text has leading whitespace")
    assert rule(issues, "train_val_overlap")["count"] == 1
    assert rule(issues, "too_long") is None and rule(issues, "role_order") is None
    assert all(i["count"] > 0 and len(i["examples"]) <= 3 for i in issues)


def test_clean_report_role_order_and_empty_field_on_raw_rows():
    rows = [{"messages": [{"role": "assistant", "content": "hi"}]},
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}]
    issues = D.clean_report(rows, "messages")
    assert rule(issues, "role_order")["examples"][0].startswith("row 1: messages[0]")
    assert rule(issues, "empty_field")["examples"] == ["row 2: messages[1].content is empty"]


def test_no_near_duplicates_among_distinct_rows():
    import random
    rng = random.Random(0)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    rows = [{"text": " ".join(rng.choice(words) for _ in range(30))} for _ in range(300)]
    assert rule(D.clean_report(rows, "text"), "near_duplicate") is None


def test_minhash_signature_matches_datasketch():
    import numpy as np
    from datasketch import MinHash
    texts = ["one two three four five six", "a b", "seven eight nine ten"]
    hashes, rows = Q._shingle_hashes(texts)
    sig, row_ids = Q._signatures(hashes, rows, len(texts))
    for k, r in enumerate(row_ids.tolist()):
        m = MinHash(num_perm=Q._NUM_PERM, seed=Q._MINHASH_SEED, hashfunc=lambda x: x)
        m.update_batch(hashes[rows == r].tolist())
        assert np.array_equal(m.hashvalues, sig[k])


def test_token_stats_with_and_without_tokenizer(tokenizer):
    rows, kind = D.to_canonical(D.load_records("builtin:demo"))
    approx = D.token_stats(rows, kind)
    assert approx["approximate"] is True and approx["count"] == len(rows)
    exact = D.token_stats(rows, kind, tokenizer=tokenizer)
    assert exact["approximate"] is False
    first = tokenizer.apply_chat_template(rows[0]["messages"], tokenize=True)
    first = first["input_ids"] if isinstance(first, dict) or hasattr(first, "keys") else first
    assert T.token_lengths(rows[:1], kind, tokenizer)[0] == [len(first)]
    assert exact["p50"] <= exact["p95"] <= exact["max"]
    assert sum(exact["histogram"]["counts"]) == len(rows)
    assert len(exact["histogram"]["edges"]) == len(exact["histogram"]["counts"]) + 1


def test_too_long_with_tokenizer(tokenizer):
    rows = [{"text": "short"}, {"text": "a much longer text " * 20}]
    issues = D.clean_report(rows, "text", tokenizer=tokenizer, max_seq_len=16)
    long = rule(issues, "too_long")
    assert long["count"] == 1 and long["examples"][0].startswith("row 2: ")
    assert 0 < long["truncated_token_share"] < 1
    rep = D.inspect_dataset("builtin:demo", tokenizer=tokenizer, max_seq_len=20)
    assert rule(rep["issues"], "too_long")["count"] > 0 and not rep["token_stats"]["approximate"]


# ---------------------------------------------------------------------------------------------
# Split, prepare, load_prepared


def test_split_deterministic_and_min_one_validation_row():
    rows = [{"text": str(i)} for i in range(50)]
    a = D.split_records(rows, 0.2, seed=1)
    assert a == D.split_records(rows, 0.2, seed=1)
    assert a != D.split_records(rows, 0.2, seed=2)
    assert len(a[1]) == 10 and len(a[0]) == 40
    t, v = D.split_records(rows[:2], 0.01)
    assert len(t) == 1 and len(v) == 1
    assert D.split_records(rows, 0.0) == (rows, [])
    assert "val_ratio" in str(err(D.split_records, rows, 1.5))


def test_stratified_split_keeps_label_shares():
    rows = [{"prompt": f"t{i}", "completion": "pos" if i % 10 < 7 else "neg"} for i in range(200)]
    train, val = D.split_records(rows, 0.1, seed=3, stratify_key="completion")
    assert len(val) == 20
    assert sum(r["completion"] == "pos" for r in val) == 14
    assert sum(r["completion"] == "pos" for r in train) == 126


def test_prepare_writes_exactly_three_files_and_round_trips(tmp_path):
    out = tmp_path / "prepared"
    res = D.prepare_dataset(str(DATA / "ds_classification.csv"), str(out), val_ratio=0.34, seed=7)
    assert sorted(os.listdir(out)) == ["meta.json", "train.jsonl", "validation.jsonl"]
    assert res["format"] == "classification" and res["kind"] == "prompt_completion"
    assert res["rows_train"] + res["rows_validation"] == 6 and res["rows_validation"] == 2
    meta = json.loads((out / "meta.json").read_text())
    assert meta["counts"] == {"train": 4, "validation": 2, "skipped": 0}
    assert meta["seed"] == 7 and meta["kind"] == "prompt_completion" and meta["created"]
    train, val, kind = D.load_prepared(str(out))
    assert kind == "prompt_completion" and len(train) == 4 and len(val) == 2
    assert sorted(os.listdir(tmp_path)) == ["prepared"]  # no temp folders left behind
    # Preparing again replaces the folder in place.
    D.prepare_dataset(str(DATA / "ds_classification.csv"), str(out), val_ratio=0.5)
    assert json.loads((out / "meta.json").read_text())["counts"]["validation"] == 3
    assert sorted(os.listdir(tmp_path)) == ["prepared"]


def test_prepare_failure_leaves_nothing_behind(tmp_path):
    bad = jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "completion": "b"},
                                         {"prompt": "a", "completion": ""}])
    out = tmp_path / "out" / "ds"
    with pytest.raises(DatasetError, match="row 2, field 'completion'"):
        D.prepare_dataset(bad, str(out))
    assert not (tmp_path / "out").exists()
    assert "name" in str(err(D.prepare_dataset, "builtin:demo", name="../escape"))


def test_prepare_failure_while_writing_keeps_old_folder(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    D.prepare_dataset(str(DATA / "ds_kto.jsonl"), str(out))
    before = (out / "train.jsonl").read_text()

    def broken(path, rows):
        if path.name == "validation.jsonl":
            raise OSError("disk full")
        path.write_text("partial")

    monkeypatch.setattr(P, "_write_jsonl", broken)
    with pytest.raises(OSError, match="disk full"):
        D.prepare_dataset(str(DATA / "ds_alpaca.jsonl"), str(out))
    assert sorted(os.listdir(tmp_path)) == ["ds"]  # no temp folder left
    assert (out / "train.jsonl").read_text() == before  # the earlier version is untouched
    with pytest.raises(OSError):
        D.prepare_dataset(str(DATA / "ds_alpaca.jsonl"), str(tmp_path / "fresh"))
    assert not (tmp_path / "fresh").exists()


def test_prepare_default_folder_and_builtin_demo(fresh_home):
    res = D.prepare_dataset("builtin:demo")
    assert Path(res["dir"]) == (fresh_home / "datasets" / "builtin-demo").resolve()
    assert res["kind"] == "messages" and res["format"] == "alpaca"
    train, val, kind = D.load_prepared("builtin-demo")  # by name under FINETUNE_HOME/datasets
    assert (len(train), len(val), kind) == (res["rows_train"], res["rows_validation"], "messages")
    raw_train, raw_val, raw_kind = D.load_prepared("builtin:demo")  # raw source: default split
    assert raw_kind == "messages" and raw_train == train and raw_val == val


def test_load_prepared_folder_without_meta(tmp_path):
    (tmp_path / "half").mkdir()
    assert "half: folder has no meta.json" in str(err(D.load_prepared, str(tmp_path / "half")))


def test_import_is_cheap():
    code = ("import sys, finetune.data; heavy = {'torch', 'transformers', 'datasets', 'gradio', "
            "'numpy', 'datasketch'} & set(sys.modules); print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------
# Sources: prepared datasets, the Hub


def test_prepared_folder_and_saved_name_are_sources(fresh_home):
    res = D.prepare_dataset(str(DATA / "ds_kto.jsonl"), name="kto-saved")
    for src in (res["dir"], "kto-saved"):
        records = D.load_records(src)
        assert len(records) == res["rows_train"] + res["rows_validation"]
        info = D.inspect_dataset(src)
        assert info["format"] == "kto" and info["rows_valid"] == len(records)
    saved = D.saved_datasets()
    assert [d["name"] for d in saved] == ["kto-saved"] and saved[0]["kind"] == "kto"


def test_hub_source_fields_and_offline_message():
    assert D.hub_source("owner/name", "", "") == "hub:owner/name::train"
    assert D.hub_source("hub:owner/name", "en", "test") == "hub:owner/name:en:test"
    assert "owner/name" in str(err(D.hub_source, "not a valid id!"))
    e = err(D.load_records, D.hub_source("someone/does-not-exist", "cfg", "validation"))
    assert str(e).startswith("hub:someone/does-not-exist:cfg:validation: could not load "
                             "'someone/does-not-exist' (config 'cfg', split 'validation')")
    assert "offline" in str(e) and "upload the file instead" in str(e)


# ---------------------------------------------------------------------------------------------
# Quality report extras


def test_inspect_field_stats_labels_and_requirement(tokenizer):
    info = D.inspect_dataset(str(DATA / "ds_classification.csv"), tokenizer=tokenizer)
    assert info["labels"]["counts"] == {"positive": 3, "negative": 2, "neutral": 1}
    assert set(info["field_stats"]) == {"prompt", "completion"}
    assert info["field_stats"]["completion"]["max_chars"] == len("positive")
    assert info["meets_requirement"] is False
    assert info["requirement"]["min_examples"] == 1000
    assert "below the LoRA minimum of 100" in info["requirement"]["reason"]
    small = D.inspect_dataset(str(DATA / "ds_classification.csv"), min_examples=5)
    assert small["meets_requirement"] is True and small["trained_tokens"] is None
    kto = D.inspect_dataset(str(DATA / "ds_kto.jsonl"), tokenizer=tokenizer)
    assert set(kto["labels"]["counts"]) == {"true", "false"}
    assert kto["trained_tokens"]["status"] == "not_applicable"
    demo = D.inspect_dataset("builtin:demo", tokenizer=tokenizer, min_examples=100)
    assert demo["meets_requirement"] and "enough" not in demo["requirement"]["reason"]
    roles = demo["field_stats"]
    assert set(roles) == {"user", "assistant"} and roles["user"]["empty_share"] == 0


def test_trained_share_ok_low_and_none(tokenizer, tmp_path):
    info = D.inspect_dataset("builtin:demo", tokenizer=tokenizer)
    tt = info["trained_tokens"]
    assert tt["status"] == "ok" and 0.05 < tt["share"] < 1 and tt["rows_checked"] == info["rows_valid"]
    # Long prompts, one-token answers: under 5% trained.
    rows = [{"prompt": f"question {i}: " + "word " * 200, "completion": "y"} for i in range(20)]
    low = D.inspect_dataset(jsonl(tmp_path / "low.jsonl", rows), tokenizer=tokenizer)
    assert low["trained_tokens"]["status"] == "low" and "only" in low["trained_tokens"]["message"]
    # Truncation cuts every answer: nothing would be trained, and prepare refuses.
    none = D.inspect_dataset(str(tmp_path / "low.jsonl"), tokenizer=tokenizer, max_seq_len=16)
    assert none["trained_tokens"]["status"] == "none" and none["trained_tokens"]["share"] == 0
    e = err(D.prepare_dataset, str(tmp_path / "low.jsonl"), str(tmp_path / "out"),
            tokenizer=tokenizer, max_seq_len=16)
    assert "refusing to save: no token would be trained within max_seq_len 16" in str(e)
    assert not (tmp_path / "out").exists()


def test_unknown_format_hint_names_columns_and_mapping_fixes_it():
    info = D.inspect_dataset(str(DATA / "ds_unknown.csv"))
    assert info["format"] == "unknown"
    assert info["hint"].startswith("Columns found: question_text, reply_text, topic.")
    assert "prompt=question_text, completion=reply_text" in info["hint"]
    fixed = D.inspect_dataset(str(DATA / "ds_unknown.csv"), fmt="prompt_completion",
                              mapping={"prompt": "question_text", "completion": "reply_text"})
    assert fixed["rows_valid"] == 3 and fixed["mapping"]["prompt"] == "question_text"


# ---------------------------------------------------------------------------------------------
# Cleaning when preparing


def test_prepare_masks_pii_and_drops_duplicates(tmp_path):
    out = tmp_path / "clean"
    res = D.prepare_dataset(str(DATA / "ds_pii.jsonl"), str(out), val_ratio=0, mask_pii=True,
                            dedupe="near")
    assert res["cleaning"]["pii_masked"] == {"rows": 3, "email": 1, "phone": 1, "secret": 1}
    assert res["cleaning"]["duplicates_removed"] == {"exact": 1, "near": 1}
    assert json.loads((out / "meta.json").read_text())["cleaning"] == res["cleaning"]
    text = (out / "train.jsonl").read_text()
    assert "[EMAIL]" in text and "[PHONE]" in text and "[SECRET]" in text
    assert "example.com" not in text and "7946" not in text and "sk-proj" not in text
    assert res["rows_train"] == 5
    exact = D.prepare_dataset(str(DATA / "ds_pii.jsonl"), str(out), val_ratio=0, dedupe="exact")
    assert exact["cleaning"]["duplicates_removed"] == {"exact": 1, "near": 0}
    assert "pii_masked" not in exact["cleaning"] and exact["rows_train"] == 6
    assert "dedupe" in str(err(D.prepare_dataset, "builtin:demo", dedupe="fuzzy"))


def test_mask_pii_text_keeps_short_numbers():
    text, counts = D.mask_pii_text("Call 555-1234 or +1 (415) 555-2671, mail a.b@c.org")
    assert text == "Call 555-1234 or [PHONE], mail [EMAIL]" and counts == {"phone": 1, "email": 1}


# ---------------------------------------------------------------------------------------------
# Fast token counting: exactly the plain batch encode's numbers


def _counts(tok, texts, special, fast):
    old = T.FAST_TOKEN_COUNT
    T.FAST_TOKEN_COUNT = fast
    try:
        return T._count_tokens(tok, texts, special)
    finally:
        T.FAST_TOKEN_COUNT = old


def _odd_texts(n=3000):
    import random
    rng = random.Random(0)
    words = ["the", "cat", "sat", "on", "mat.", "Hello,", "world!", "42", "naïve", "café", "x=1;",
             "<|im_end|>", "\n", "\n\n", "  ", "\t", "end.\n"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 30))) for _ in range(n)]


def test_fast_token_count_is_exact(tokenizer):
    texts = _odd_texts()
    for special in (False, True):
        assert _counts(tokenizer, texts, special, True) == _counts(tokenizer, texts, special, False)
    assert T._count_by_pieces(tokenizer.backend_tokenizer, texts, False) is not None  # took the fast path


def test_fast_token_count_falls_back_for_newline_merging_tokenizers():
    # A Llama-3-style pre-tokenizer joins punctuation with a following newline (".\n"), so
    # splitting at newlines would change counts; the check must notice and split at spaces only.
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    pattern = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
               r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    texts = _odd_texts()
    tk.train_from_iterator(texts * 3, trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk)
    assert _counts(tok, texts, False, True) == _counts(tok, texts, False, False)
