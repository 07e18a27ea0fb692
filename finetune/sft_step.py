"""The SFT step's loss, made cheaper two ways without changing what is learned.

1. Logits only where there is a label. The loss needs the LM head only at the positions whose next
   token is trained (the answers); SmolLM2's head is a 49152 x 576 matrix, a fifth of the model's
   FLOPs per token, and its log-softmax runs over 49152 columns. `LeanSFTLoss` asks the model for
   the logits of those positions only (transformers' `logits_to_keep` with an index tensor) and takes
   the cross-entropy itself, summed over the labelled tokens and divided by the trainer's
   `num_items_in_batch` exactly as the model's own loss does (so gradient accumulation and several
   processes weigh tokens the same). TRL's default "chunked_nll" does the same selection but runs
   each chunk under gradient checkpointing, i.e. the head twice: on the demo rows with SmolLM2 a
   step took 980 ms with it against 722 ms with this. Where the kept logits would be large (more
   than LEAN_MAX_BYTES), the trainer's chunked loss is used instead; so it is with several processes
   (each rank must run the same collectives) or GPUs in one process (DataParallel would split the
   index tensor). A model that ignores `logits_to_keep` returns all logits, selected here. The
   trainer's metrics (mean_token_accuracy, entropy, num_tokens) are kept. A batch padded on the
   right only goes without its padding mask: causal masking already hides the pads from every real
   token, and SDPA's causal kernel skips the masked half of the attention.

2. Shared-prefix batches: the tokens every row of a batch starts with are computed once.

Chat data usually starts every row with the same tokens: the template's system turn (SmolLM2 and
Qwen add a default one to every conversation), the user's fixed system prompt, a fixed instruction.
A causal model's activations at those positions do not depend on what follows, so within one batch
they are the same for every row. `LeanSFTLoss` runs the decoder once
on the common prefix with a KV cache, expands the cache over the batch (a view: no copy), and runs the
rows' remaining tokens against it. The gradient reaches the prefix through the cache (the expand
sums the rows' contributions), so the loss and the update are those of the whole rows; only the
work on the shared tokens is done once instead of once per row. On builtin:demo with SmolLM2-135M
(rows of about 43 tokens, 21 of them the template's system turn) a batch of 4 computes 106 tokens
instead of 172.

Where it applies: one process (each rank would decide alone, and their collectives must match),
SFT with labels only after the prefix (the loss needs no logits inside it), an attention mask (not
padding-free), no dropout (one mask would serve every row's prefix), no gradient checkpointing, a
decoder whose cache is the plain full-attention one (sliding-window layers trim their cache) and
whose RoPE does not depend on the sequence's length (longrope, dynamic). The first batch it
applies to is checked once against the plain forward (dropout off, no gradients); if the losses do
not agree, it turns itself off for the run. status.json `prefix_sharing` says what happened, and
`prefix_sharing_saved` the share of tokens not computed. Measured on the demo rows with SmolLM2
(bf16, 2 threads, lean loss): 722 -> 672 ms a step at batch 4, 1159 -> 1045 ms at batch 8; the pass
over the prefix has a fixed cost of its own, so the gain grows with the batch.
"""

from __future__ import annotations

MIN_PREFIX = 4  # shared tokens worth a separate pass
MIN_SAVED = 0.05  # of the batch's tokens
AGREE = 0.01  # relative difference of the checked losses (bf16 matmuls of other shapes round differently)
LEAN_MAX_BYTES = {"cpu": 2 << 30, "cuda": 512 << 20}  # kept logits at their peak (see LEAN_BYTES_PER_LOGIT)
# bf16 logits + their fp32 copy + cross-entropy's saved log-softmax + its gradient; the metrics run in chunks
LEAN_BYTES_PER_LOGIT = 16
METRIC_CHUNK = 1024  # labelled positions per no-grad metric chunk
POSITION_DEPENDENT_ROPE = ("longrope", "dynamic")  # frequencies chosen from the longest position seen


class PrefixUnsupported(Exception):
    pass


def shared_prefix_len(inputs) -> int:
    """How many leading tokens every row of this batch shares and may be computed once, or 0."""
    ids, am, labels = inputs.get("input_ids"), inputs.get("attention_mask"), inputs.get("labels")
    if ids is None or am is None or labels is None or ids.dim() != 2 or ids.shape[0] < 2:
        return 0
    if any(k in inputs for k in ("shift_labels", "cu_seq_lens_q", "pixel_values", "inputs_embeds")):
        return 0
    same = ((ids == ids[:1]) & (am == 1)).all(dim=0)
    p = int(same.long().cumprod(0).sum())
    labelled = (labels != -100)
    if not bool(labelled.any(dim=1).all()):
        first = labels.shape[1]  # a row without labels constrains nothing
        rows = labelled.any(dim=1)
        if rows.any():
            first = int(labelled[rows].float().argmax(dim=1).min())
    else:
        first = int(labelled.float().argmax(dim=1).min())
    # logits at position t predict the label at t + 1: the suffix must start at or before the first
    # labelled position minus one, and keep at least one token
    p = min(p, first - 1, ids.shape[1] - 1)
    b, s = ids.shape
    if p < MIN_PREFIX or (b - 1) * p < MIN_SAVED * b * s:
        return 0
    if "position_ids" in inputs:
        pos = inputs["position_ids"]
        import torch

        if pos.shape != ids.shape or not bool((pos[:, :p] == torch.arange(p, device=pos.device)).all()):
            return 0
    return p


def kept_positions(labels):
    """The positions t whose next token (labels[:, t + 1]) is trained in some row."""
    return (labels[:, 1:] != -100).any(dim=0).nonzero().squeeze(1)


def right_padded_only(inputs) -> bool:
    """True when the batch is a plain one whose rows are padded on the right only (no cache, no
    position ids of its own), so the padding mask may be left to causal masking."""
    am = inputs.get("attention_mask")
    if (am is None or am.dim() != 2 or "past_key_values" in inputs or "position_ids" in inputs
            or inputs.get("input_ids") is None or am.shape != inputs["input_ids"].shape):
        return False
    return bool((am[:, 0] == 1).all() and (am[:, 1:] <= am[:, :-1]).all())


def text_config(model):
    """The text decoder's config of a model (a multimodal model's text part), or None."""
    cfg = getattr(model, "config", None)
    return cfg.get_text_config() if cfg is not None and hasattr(cfg, "get_text_config") else cfg


def _causal_lm(model):
    """The CausalLM under a PEFT wrapper (its base_model is the decoder without the LM head)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner


def split_inputs(model, inputs, p: int) -> dict:
    """Run the decoder on the shared prefix (row 0) with a cache, expand the cache over the batch,
    and return the inputs for the rest of the rows' tokens."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    lm = _causal_lm(model)
    backbone = lm.base_model
    if backbone is lm:
        raise PrefixUnsupported("the model has no separate decoder")
    ids, am = inputs["input_ids"], inputs["attention_mask"]
    b = ids.shape[0]
    text = text_config(lm)
    rope = getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None) or {}
    if isinstance(rope, dict) and (rope.get("rope_type") or rope.get("type")) in POSITION_DEPENDENT_ROPE:
        raise PrefixUnsupported(f"{rope.get('rope_type') or rope.get('type')} RoPE depends on the whole length")
    cache = DynamicCache(config=lm.config)
    if any(type(layer) is not DynamicLayer for layer in cache.layers):
        raise PrefixUnsupported("sliding-window or other special cache layers")
    kw = {}
    if "position_ids" in inputs:
        kw["position_ids"] = inputs["position_ids"][:1, :p]
    backbone(input_ids=ids[:1, :p], attention_mask=am[:1, :p], past_key_values=cache, use_cache=True, **kw)
    for layer in cache.layers:
        if layer.keys is None or layer.keys.dim() != 4 or layer.keys.shape[-2] != p:
            raise PrefixUnsupported("the cache does not hold the prefix's keys")
        layer.keys = layer.keys.expand(b, -1, -1, -1)
        layer.values = layer.values.expand(b, -1, -1, -1)
    out = dict(inputs)
    out["input_ids"], out["labels"] = ids[:, p:], inputs["labels"][:, p:]
    out["attention_mask"] = am  # the whole length: the suffix attends to the cached prefix
    if "position_ids" in inputs:
        out["position_ids"] = inputs["position_ids"][:, p:]
    out["past_key_values"] = cache
    return out


class PrefixState:
    def __init__(self, report=None):
        self.enabled = True
        self.checked = False
        self.report = report or (lambda text: None)
        self.batches = 0
        self.saved = 0  # tokens not computed
        self.total = 0


class LeanSFTLoss:
    """Trainer mixin (TRL's SFTTrainer): the lean loss, and the shared prefix when `fts_prefix` is a
    PrefixState (None: off). `fts_lean` False keeps the trainer's own loss."""

    fts_prefix: PrefixState | None = None
    fts_lean: bool = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        st = self.fts_prefix
        p = shared_prefix_len(inputs) if st is not None and st.enabled else 0
        if p and not st.checked:
            self._fts_check_prefix(model, inputs, p)
            if not st.enabled:
                p = 0
        if p:
            try:
                with self._fts_autocast():
                    shared = split_inputs(model, inputs, p)
            except PrefixUnsupported as exc:
                st.enabled, p = False, 0
                st.report(f"off: {exc}")
            else:
                if model.training:  # evaluation batches are larger: count what training saved
                    b, s = inputs["input_ids"].shape
                    st.batches += 1
                    st.saved += (b - 1) * p
                    st.total += b * s
                inputs = shared
        if self._fts_lean_fits(inputs):
            return self._fts_lean_loss(model, inputs, return_outputs, num_items_in_batch)
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)

    def _fts_lean_fits(self, inputs) -> bool:
        labels = inputs.get("labels")
        if (not self.fts_lean or labels is None or labels.dim() != 2 or "shift_labels" in inputs
                or getattr(self.args, "n_gpu", 1) > 1
                or getattr(self, "num_virtual_tokens", 0) or getattr(self.args, "use_liger_kernel", False)
                or getattr(self, "aux_loss_enabled", False) or not getattr(self, "model_accepts_loss_kwargs", True)
                or getattr(self.args, "loss_type", "nll") not in ("nll", "chunked_nll")):
            return False
        vocab = getattr(text_config(_causal_lm(self.model)), "vocab_size", None)
        if not vocab:
            return False
        n = labels.shape[0] * int((labels[:, 1:] != -100).any(dim=0).sum())
        dev = "cuda" if labels.is_cuda else "cpu"
        return n * vocab * LEAN_BYTES_PER_LOGIT <= LEAN_MAX_BYTES.get(dev, LEAN_MAX_BYTES["cuda"])

    def _fts_lean_loss(self, model, inputs, return_outputs, num_items_in_batch):
        import torch
        import torch.nn.functional as F
        from transformers.modeling_outputs import CausalLMOutputWithPast

        mode = "train" if self.model.training else "eval"
        inputs = dict(inputs)
        inputs.pop("_prediction_loss_only", None)
        labels = inputs.pop("labels")
        am = inputs.get("attention_mask")
        cols = kept_positions(labels)
        target = labels[:, 1:].index_select(1, cols).reshape(-1)
        inputs["use_cache"] = False
        if right_padded_only(inputs):
            # Causal masking alone already hides right padding from every real token (pads come after
            # it), so the padding mask changes nothing the loss sees; without it SDPA runs its causal
            # kernel, which skips the masked half (4 x 1024 SmolLM2 step: 15.2 -> 13.9 s).
            inputs.pop("attention_mask")
            inputs.setdefault("position_ids", torch.arange(labels.shape[1], device=labels.device).unsqueeze(0))
        out = model(**inputs, logits_to_keep=cols)  # labels=None: no loss in the model, no chunking
        logits = out.logits
        del out
        if logits.shape[1] != cols.numel():
            if logits.shape[1] != labels.shape[1]:
                raise RuntimeError(f"the model returned logits for {logits.shape[1]} positions, expected "
                                   f"{cols.numel()} (logits_to_keep) or {labels.shape[1]}")
            logits = logits.index_select(1, cols)  # a model that ignores logits_to_keep: select here
        logits = logits.float().flatten(0, 1)
        loss = F.cross_entropy(logits, target, ignore_index=-100, reduction="sum")
        valid = target != -100
        n_valid = valid.sum()
        if num_items_in_batch is not None:  # the labelled tokens of the whole optimiser step
            loss = loss / (num_items_in_batch.to(loss.device) if torch.is_tensor(num_items_in_batch)
                           else num_items_in_batch)
        else:
            loss = loss / n_valid.clamp(min=1)
        with torch.no_grad():
            rows = valid.nonzero().squeeze(1)
            entropy_sum = logits.new_zeros(())
            correct = torch.zeros((), dtype=torch.long, device=logits.device)
            for i in range(0, rows.numel(), METRIC_CHUNK):
                idx = rows[i:i + METRIC_CHUNK]
                lv = logits.index_select(0, idx)
                logp = torch.log_softmax(lv, dim=-1)
                entropy_sum += -(logp.exp() * logp).sum()
                correct += (lv.argmax(dim=-1) == target.index_select(0, idx)).sum()
                del lv, logp
            gather = self.accelerator.gather_for_metrics
            n_all = gather(n_valid).sum()
            if n_all > 0:
                self._metrics[mode]["entropy"].append((gather(entropy_sum).sum() / n_all).item())
                self._metrics[mode]["mean_token_accuracy"].append((gather(correct).sum() / n_all).item())
            if mode == "train":
                tokens = gather(am.sum()).sum().item() if am is not None else labels.numel()
                self._total_train_tokens += tokens // getattr(self, "_tp_size", 1)
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            scale = self.accelerator.num_processes  # as the Trainer's own compute_loss does
            pc = getattr(self.accelerator, "parallelism_config", None)
            if pc is not None:
                scale //= pc.tp_size
            loss = loss * (scale if self.args.n_gpu <= 1 else self.args.n_gpu)
        if return_outputs:
            return loss, CausalLMOutputWithPast(loss=loss, logits=None)
        return loss

    def _fts_autocast(self):
        """The mixed precision the model's own forward runs under (accelerate wraps the prepared
        model's forward in it; the prefix pass calls the decoder directly)."""
        import contextlib

        acc = getattr(self, "accelerator", None)
        return acc.autocast() if acc is not None else contextlib.nullcontext()

    def _fts_check_prefix(self, model, inputs, p: int) -> None:
        import torch

        st = self.fts_prefix
        st.checked = True
        was_training = model.training
        model.eval()  # no dropout: both passes must see the same function
        try:
            with torch.no_grad():  # the model's own loss (the trainer's would count these passes in its metrics)
                plain = float(model(**dict(inputs, use_cache=False)).loss)
                with self._fts_autocast():
                    split = split_inputs(model, inputs, p)
                shared = float(model(**dict(split, use_cache=False)).loss)
        except PrefixUnsupported as exc:
            st.enabled = False
            st.report(f"off: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 -- a model this does not fit: train the plain way
            st.enabled = False
            st.report(f"off: the shared-prefix pass failed on this model ({type(exc).__name__}: {exc})"[:300])
            return
        finally:
            if was_training:
                model.train()
        b, s = inputs["input_ids"].shape
        if not (abs(plain - shared) <= AGREE * max(1.0, abs(plain))):
            st.enabled = False
            st.report(f"off: the shared-prefix loss {shared:.4f} did not match the plain loss {plain:.4f}")
            return
        st.report(f"on: the rows of a batch start with the same {p} tokens, computed once per batch "
                  f"({(b - 1) * p / (b * s):.0%} of the first batch's tokens; checked on it: loss {shared:.4f} "
                  f"vs {plain:.4f} the plain way)")
