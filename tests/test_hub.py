"""Pushing to the Hub, against the Hub-compatible server in tests/fake_hub.py.

A real tiny LoRA run is pushed, downloaded with snapshot_download and loaded with
PeftModel.from_pretrained (logits equal the local adapter's); 503s on commit are retried into exactly
one commit; 401/403 fail fast naming the missing permission; private repos stay private; merged
weights and GGUF round trip; datasets and the Space deploy push what they should.
"""

import json
from pathlib import Path

import pytest

ALICE = "hf_alice_write"


@pytest.fixture(scope="module")
def trained_run(tiny_model_dir):
    from conftest import trained_tiny_run
    from finetune.evaluate import evaluate_run

    run_id = trained_tiny_run(4)
    evaluate_run(run_id, max_examples=4, max_new_tokens=4)
    return run_id


def _logits(model):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([[5, 17, 42, 99, 3]])).logits


def test_push_run_snapshot_and_load_adapter(fake_hub, trained_run, tmp_path):
    import torch
    from huggingface_hub import HfApi, ModelCard, snapshot_download
    from peft import PeftModel

    from finetune.hub import push_run
    from finetune.modeling import load_model
    from finetune.paths import home
    from finetune.runs import artifact_dir

    steps = []
    res = push_run(trained_run, "alice/tiny-adapter", token=ALICE, progress=lambda f, m: steps.append((f, m)))
    assert set(res) >= {"url", "commit", "files"} and res["url"].endswith("/alice/tiny-adapter")
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "loss_curve.png", "eval/report.json",
            "eval/report.md", "tokenizer.json"} <= set(res["files"])
    assert steps and steps[-1][0] == 1.0
    repo = fake_hub.repo("alice/tiny-adapter")
    assert repo.private is True  # private by default
    assert fake_hub.commits_made("alice/tiny-adapter") == 1
    assert repo.head.oid == res["commit"] and repo.head.title.startswith("Fine-Tune Studio: adapter from run")
    assert fake_hub.files("alice/tiny-adapter")["loss_curve.png"].startswith(b"\x89PNG")

    # no local path leaves the machine
    for path, data in fake_hub.files("alice/tiny-adapter").items():
        assert str(home()).encode() not in data, path
    cfg = json.loads(fake_hub.files("alice/tiny-adapter")["adapter_config.json"])
    assert cfg["base_model_name_or_path"] == "builtin:tiny-chat"

    local = snapshot_download("alice/tiny-adapter", token=ALICE, cache_dir=tmp_path / "cache")
    base = load_model("builtin:tiny-chat")
    pulled = PeftModel.from_pretrained(base, local).eval()
    mine = PeftModel.from_pretrained(load_model("builtin:tiny-chat"), str(artifact_dir(trained_run))).eval()
    assert torch.equal(_logits(pulled), _logits(mine))
    with torch.no_grad(), pulled.disable_adapter():
        assert not torch.equal(_logits(pulled), _logits(mine))  # the adapter matters

    card = ModelCard.load(Path(local) / "README.md")
    assert card.data.library_name == "peft" and "fine-tune-studio" in card.data.tags
    idx = card.data.eval_results
    assert idx and {e.metric_type for e in idx} == {"exact_match", "perplexity"}
    assert "PeftModel.from_pretrained" in card.text and "## Limitations" in card.text

    # an update is one more commit with unchanged files skipped; private read needs a token
    from huggingface_hub.errors import RepositoryNotFoundError

    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).repo_info("alice/tiny-adapter")
    with pytest.raises(Exception):
        snapshot_download("alice/tiny-adapter", token=False, cache_dir=tmp_path / "anon")


def test_push_retries_503_into_exactly_one_commit(fake_hub, trained_run):
    from finetune.hub import push_run

    fake_hub.fail_commits_before = 2
    res = push_run(trained_run, "alice/retry", token=ALICE, backoff_s=0.01)
    assert fake_hub.commits_made("alice/retry") == 1 and fake_hub.commit_posts == 3
    assert res["attempts"] == 3 and fake_hub.repo("alice/retry").head.oid == res["commit"]


def test_lost_commit_answer_is_not_committed_twice(fake_hub, trained_run):
    from finetune.hub import push_run

    fake_hub.fail_commits_after = 1  # the commit lands, the answer is a 503
    res = push_run(trained_run, "alice/lost", token=ALICE, backoff_s=0.01)
    assert fake_hub.commits_made("alice/lost") == 1
    assert res["commit"] == fake_hub.repo("alice/lost").head.oid


def test_auth_failures_fail_fast_and_say_what_is_missing(fake_hub, trained_run):
    from finetune.hub import HubAuthError, push_run

    with pytest.raises(HubAuthError, match="401") as e:
        push_run(trained_run, "alice/x", token="hf_not_a_token", backoff_s=10)
    assert "write" in str(e.value)
    with pytest.raises(HubAuthError, match="403.*'write' role"):
        push_run(trained_run, "alice/x", token="hf_alice_read", backoff_s=10)
    with pytest.raises(HubAuthError, match="no write permission for 'alice'"):
        push_run(trained_run, "alice/x", token="hf_bob_write", backoff_s=10)
    assert fake_hub.commit_posts == 0 and fake_hub.repo("alice/x") is None


@pytest.mark.parametrize("bad", ["", "noslash", "a/b/c", "alice/..", "alice/-x", "alice/x--y", "al ice/x",
                                 "alice/x.git", "../alice/x", "alice/" + "x" * 97])
def test_repo_name_is_validated_before_sending(fake_hub, trained_run, bad):
    from finetune.hub import HubError, push_run

    with pytest.raises(HubError, match="repo"):
        push_run(trained_run, bad, token=ALICE)
    assert fake_hub.requests == []


def test_public_push(fake_hub, trained_run):
    from huggingface_hub import HfApi

    from finetune.hub import push_run

    push_run(trained_run, "alice/open", token=ALICE, private=False)
    assert "adapter_config.json" in HfApi(token=False).list_repo_files("alice/open")


def test_merged_and_gguf_round_trip(fake_hub, trained_run, tmp_path):
    import torch
    from huggingface_hub import snapshot_download
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from finetune.gguf_export import check_gguf
    from finetune.hub import push_run
    from finetune.modeling import load_model
    from finetune.runs import artifact_dir

    res = push_run(trained_run, "alice/merged", token=ALICE, merged=True, gguf="q8_0")
    assert "merged/model.safetensors" in res["files"] and "gguf/merged-q8_0.gguf" in res["files"]
    assert fake_hub.commits_made("alice/merged") == 1
    local = Path(snapshot_download("alice/merged", token=ALICE, cache_dir=tmp_path / "c"))
    merged = AutoModelForCausalLM.from_pretrained(local / "merged", dtype=torch.float32).eval()
    peft = PeftModel.from_pretrained(load_model("builtin:tiny-chat"), str(artifact_dir(trained_run))).eval()
    assert torch.allclose(_logits(merged), _logits(peft), atol=1e-4)
    q8 = check_gguf(local / "merged", local / "gguf" / "merged-q8_0.gguf")
    # q8_0 rounds each block of 32 weights to 8 bits: close, not exact (bench/bench_hub.py: ~98% argmax agreement)
    # a random tiny model's logits are nearly flat, so a few argmaxes flip; the mean error is the measure
    assert q8["argmax_agreement"] >= 0.75 and q8["mean_abs_diff"] < 0.01 * q8["logit_scale"], q8
    assert q8["max_abs_diff"] < 0.1 * q8["logit_scale"], q8


def test_gguf_f16_matches_merged_closely(trained_run, tmp_path):
    from finetune.gguf_export import check_gguf, export_gguf
    from finetune.hub import merge_run

    merged = merge_run(trained_run, tmp_path / "merged")
    out = export_gguf(merged, tmp_path / "m-f16.gguf", "f16")
    r = check_gguf(merged, out)
    assert r["argmax_agreement"] == 1.0 and r["max_abs_diff"] < 0.01 * r["logit_scale"], r
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=out.name)
    ref = AutoTokenizer.from_pretrained(str(merged))
    text = "What is the capital of France?"
    assert tok(text)["input_ids"] == ref(text)["input_ids"]


def test_data_push_with_card(fake_hub, tmp_path):
    from finetune.data import prepare_dataset
    from finetune.hub import push_dataset

    out = prepare_dataset("builtin:demo", str(tmp_path / "demo"), val_ratio=0.1, seed=7)
    res = push_dataset(out["dir"], "alice/demo-data", token=ALICE)
    files = fake_hub.files("alice/demo-data", "dataset")
    assert set(res["files"]) == {"README.md", "meta.json", "train.jsonl", "validation.jsonl"} <= set(files)
    card = files["README.md"].decode()
    assert f"| train rows | {out['rows_train']} |" in card and "split seed" in card and "## Cleaning" in card
    assert fake_hub.repo("alice/demo-data", "dataset").private
    assert files["train.jsonl"] == Path(out["train_path"]).read_bytes()


def test_deploy_writes_app_files_and_front_matter(fake_hub):
    import yaml

    from finetune.hub import deploy_space

    res = deploy_space("alice/studio", token=ALICE)
    files = fake_hub.files("alice/studio", "space")
    names = set(res["files"])
    assert {"app.py", "requirements.txt", "README.md", "finetune/__init__.py", "ui/__init__.py"} <= names
    assert not [n for n in names if n.startswith(("tests/", "bench/", "finetune_home")) or "__pycache__" in n]
    text = files["README.md"].decode()
    fm = yaml.safe_load(text.split("---")[1])
    space = yaml.safe_load((Path(__file__).parent.parent / "space.yaml").read_text())
    assert fm["sdk"] == "gradio" and fm["app_file"] == "app.py" and fm["hf_oauth"] is True
    assert fm["hf_oauth_scopes"] == space["hf_oauth_scopes"] and fm["sdk_version"] == space["sdk_version"]
    assert fake_hub.repo("alice/studio", "space").sdk == "gradio"
    assert fm["emoji"] and res["secrets_to_set"] == ["HF_TOKEN"]  # README's look kept; secrets never sent
    assert b"HF_TOKEN" not in files["README.md"] or "secrets" not in fm


def test_push_endpoint_through_gradio_client(fake_hub, trained_run):
    """The `push` API of the running app (locally: a typed token; progress reported; one commit)."""
    from gradio_client import Client

    from conftest import serve_app

    demo, url = serve_app()
    try:
        client = Client(url, verbose=False)
        res = client.predict(trained_run, "alice/from-ui", False, False, "none", "hf_alice_write", api_name="/push")
        assert res["commit"] == fake_hub.repo("alice/from-ui").head.oid and res["private"] is True
        with pytest.raises(Exception, match="403"):
            client.predict(trained_run, "alice/from-ui-2", False, False, "none", "hf_alice_read", api_name="/push")
        with pytest.raises(Exception, match="repo"):
            client.predict(trained_run, "not a repo", api_name="/push")
    finally:
        demo.close()
