"""The SFT step's cheaper loss (finetune.sft_step, issue 17): logits only at trained positions, and
each batch's shared prefix computed once. Both must give the loss and gradients of the plain way.

Everything runs the tiny built-in model in fp32 through the real trainer class, so the comparisons
are exact up to float summation order; no test depends on this machine's speed.
"""

import pytest
import torch


def _batch(rows, pad_id):
    """rows: [(token ids, prompt length)] -> a right-padded SFT batch with prompt labels masked."""
    s = max(len(ids) for ids, _ in rows)
    b = len(rows)
    ids = torch.full((b, s), pad_id)
    am = torch.zeros(b, s, dtype=torch.long)
    lab = torch.full((b, s), -100)
    for i, (r, n) in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        am[i, : len(r)] = 1
        lab[i, n: len(r)] = torch.tensor(r[n:])
    return {"input_ids": ids, "attention_mask": am, "labels": lab}


def test_shared_prefix_len_stops_before_the_first_trained_token():
    from finetune.sft_step import MIN_PREFIX, shared_prefix_len

    common = list(range(10, 22))  # 12 shared tokens
    rows = [(common + [30, 31, 32, 33], 14), (common + [40, 41, 42], 13), (common + [50, 51, 52, 53, 54], 15)]
    batch = _batch(rows, 0)
    # the second row's first label is at 13: its logits come from position 12, so at most 12 tokens
    assert shared_prefix_len(batch) == 12
    rows[1] = (common + [40, 41, 42], 8)  # a row trained from position 8 on
    assert shared_prefix_len(_batch(rows, 0)) == 7
    rows[1] = (common + [40, 41, 42], 3)
    assert shared_prefix_len(_batch(rows, 0)) == 0  # below MIN_PREFIX: not worth a pass
    assert MIN_PREFIX > 2
    one = _batch(rows[:1], 0)
    assert shared_prefix_len(one) == 0  # nothing to share in one row
    other = _batch([(common + [1, 2], 13), ([9] + common[1:] + [3, 4], 13)], 0)
    assert shared_prefix_len(other) == 0  # the first token differs
    batch = _batch([(common + [1, 2], 13), (common + [3, 4], 13)], 0)
    batch["position_ids"] = torch.arange(14).repeat(2, 1) + 1  # not positions from 0: not ours to split
    assert shared_prefix_len(batch) == 0


@pytest.fixture(scope="module")
def tiny_trainer(tiny_model_dir, tmp_path_factory):
    """Our real SFT trainer class (make_trainer) on the tiny model, fp32, with a LoRA whose B is not zero."""
    from finetune.config import default_run_config
    from finetune.train import build_model, load_data, make_trainer, resolve_plan

    cfg = default_run_config("builtin:tiny-chat", "builtin:demo", max_steps=1, epochs=1.0)
    cfg.train.precision = "fp32"
    plan = resolve_plan(cfg)
    model, tok, peft_config, _ = build_model(cfg, plan)
    train_ds, eval_ds, _ = load_data(cfg, tok)
    tr = make_trainer(cfg, model, tok, peft_config, train_ds, eval_ds, str(tmp_path_factory.mktemp("ckpt")), plan)
    torch.manual_seed(0)
    for n, p in tr.model.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.05)
    return tr, tok


def _loss_and_grads(tr, batch, n_items, lean: bool, prefix):
    from finetune.sft_step import PrefixState

    tr.fts_lean = lean
    tr.fts_prefix = PrefixState() if prefix else None
    if prefix:
        tr.fts_prefix.checked = True  # compared here directly
    model = tr.model
    model.train()
    model.zero_grad()
    with tr.compute_loss_context_manager():
        loss = tr.compute_loss(model, dict(batch), num_items_in_batch=n_items)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
    return loss.detach(), grads, tr.fts_prefix


def _chat_rows(tok, pairs, system="You are a careful assistant. Answer in one word."):
    rows = []
    for q, a in pairs:
        msgs = [{"role": "system", "content": system}, {"role": "user", "content": q},
                {"role": "assistant", "content": a}]
        full = tok.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"]
        prompt = tok.apply_chat_template(msgs[:2], tokenize=True, add_generation_prompt=True,
                                         return_dict=True)["input_ids"]
        assert full[: len(prompt)] == prompt
        rows.append((full, len(prompt)))
    return rows


@pytest.mark.parametrize("lean,prefix", [(True, False), (False, True), (True, True)])
def test_lean_loss_and_shared_prefix_match_the_trainers_own_loss(tiny_trainer, lean, prefix):
    tr, tok = tiny_trainer
    rows = _chat_rows(tok, [("Opposite of big?", "small"), ("Capital of France?", "Paris, of course"),
                            ("Two plus two?", "four"), ("Colour of the sky on a clear day?", "blue")])
    batch = _batch(rows, tok.pad_token_id)
    n_items = int((batch["labels"][:, 1:] != -100).sum()) * 3  # as if part of a 3-micro-batch step
    ref_loss, ref_grads, _ = _loss_and_grads(tr, batch, n_items, lean=False, prefix=False)
    loss, grads, st = _loss_and_grads(tr, batch, n_items, lean=lean, prefix=prefix)
    assert abs(loss.item() - ref_loss.item()) <= 1e-5 * max(1.0, abs(ref_loss.item()))
    assert ((grads - ref_grads).norm() / ref_grads.norm()).item() < 1e-4
    if prefix:
        assert st.batches == 1 and st.saved >= 3 * 8  # the system turn is shared by the 4 rows


def test_lean_loss_keeps_the_trainers_metrics(tiny_trainer):
    tr, tok = tiny_trainer
    batch = _batch(_chat_rows(tok, [("Opposite of up?", "down"), ("Opposite of hot?", "cold")]), tok.pad_token_id)
    tr._metrics["train"].clear()
    before = tr._total_train_tokens
    _loss_and_grads(tr, batch, None, lean=True, prefix=False)
    m = tr._metrics["train"]
    assert 0.0 <= m["mean_token_accuracy"][-1] <= 1.0 and m["entropy"][-1] > 0
    assert tr._total_train_tokens - before == int(batch["attention_mask"].sum())


def test_a_real_run_records_the_shared_prefix(tmp_path):
    """The demo run of the tiny model: its chat rows share the template's opening; status.json says
    the sharing was checked and switched on, and the run finishes with a finite loss."""
    import math

    from finetune.config import default_run_config
    from finetune.runs import create_run, read_status, run_dir
    from finetune.train import train_run

    cfg = default_run_config("builtin:tiny-chat", "builtin:demo", max_steps=4, epochs=1.0, eval_steps=4,
                             save_steps=4, logging_steps=1)
    rid = create_run(cfg)
    assert train_run(run_dir(rid)) == 0
    st = read_status(rid)
    assert st["state"] == "completed", st.get("error")
    assert st["prefix_sharing"].startswith("on: the rows of a batch start with the same "), st["prefix_sharing"]
    assert 0 < st["prefix_sharing_saved"] < 1
    assert math.isfinite(st["eval_loss"])


def test_the_first_batch_check_turns_sharing_on_or_off(tiny_trainer, monkeypatch):
    import finetune.sft_step as ss
    from finetune.sft_step import PrefixState

    tr, tok = tiny_trainer
    batch = _batch(_chat_rows(tok, [("Opposite of up?", "down"), ("Opposite of wet?", "dry"),
                                    ("Opposite of old?", "new")]), tok.pad_token_id)
    said = []
    tr.fts_lean, tr.fts_prefix = True, PrefixState(said.append)
    with tr.compute_loss_context_manager():
        tr.compute_loss(tr.model, dict(batch))
    assert said and said[0].startswith("on: ") and tr.fts_prefix.enabled and tr.fts_prefix.batches == 1
    monkeypatch.setattr(ss, "AGREE", -1.0)  # no two losses agree: the check must switch sharing off
    said.clear()
    tr.fts_prefix = PrefixState(said.append)
    with tr.compute_loss_context_manager():
        loss = tr.compute_loss(tr.model, dict(batch))
    assert said[0].startswith("off: the shared-prefix loss") and not tr.fts_prefix.enabled
    assert tr.fts_prefix.batches == 0 and torch.isfinite(loss)


def test_evaluation_and_the_size_fallback_give_the_trainers_loss(tiny_trainer, monkeypatch):
    import finetune.sft_step as ss

    tr, tok = tiny_trainer
    batch = _batch(_chat_rows(tok, [("Two plus three?", "five"), ("Capital of Peru?", "Lima")]), tok.pad_token_id)
    tr.fts_prefix = None
    out = {}
    for lean in (False, True):
        tr.fts_lean = lean
        loss, logits, labels = tr.prediction_step(tr.model, dict(batch), prediction_loss_only=False)
        out[lean] = loss.item()
    assert abs(out[True] - out[False]) <= 1e-5 * max(1.0, out[False])
    tr.fts_lean = True
    assert tr._fts_lean_fits(batch)
    monkeypatch.setattr(ss, "LEAN_MAX_BYTES", {"cpu": 1, "cuda": 1})  # too large: the trainer's own loss
    assert not tr._fts_lean_fits(batch)
    loss, _, _ = tr.prediction_step(tr.model, dict(batch), prediction_loss_only=True)
    assert abs(loss.item() - out[False]) <= 1e-5 * max(1.0, out[False])


def test_prefix_sharing_stays_off_where_one_mask_or_recomputation_would_change_the_step(tiny_trainer):
    from finetune.config import default_run_config
    from finetune.train import prefix_sharing_off

    tr, _ = tiny_trainer
    cfg = default_run_config("builtin:tiny-chat", "builtin:demo")
    assert prefix_sharing_off(cfg, tr.model) == ""
    cfg.lora.dropout = 0.05
    assert "LoRA dropout 0.05" in prefix_sharing_off(cfg, tr.model)
    cfg.lora.dropout = 0.0
    cfg.train.gradient_checkpointing = True
    assert "gradient checkpointing" in prefix_sharing_off(cfg, tr.model)


def test_only_right_padded_batches_go_without_their_mask():
    from finetune.sft_step import right_padded_only

    batch = _batch([([5, 6, 7, 8], 2), ([5, 6], 1)], 0)
    assert right_padded_only(batch)  # [1 1 1 1], [1 1 0 0]: the lean-loss test compares this case
    left = dict(batch, attention_mask=batch["attention_mask"].flip(1))
    assert not right_padded_only(left)  # left padding: real tokens come after pads, the mask matters
    assert not right_padded_only(dict(batch, position_ids=torch.arange(4).repeat(2, 1)))
    assert not right_padded_only(dict(batch, past_key_values=object()))
