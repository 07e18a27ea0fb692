"""Loading models and tokenizers, and greedy generation: shared by training, evaluation and compare.

Heavy libraries are imported inside the functions. Unsloth is imported only after a CUDA device is
found (it fails to import without one) and before transformers/peft in that process.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from .builtin import resolve_model

# bitsandbytes warns on every CPU import that an optional Hub-downloaded kernel is missing; we never
# want that download (offline by design), so the warning is only noise in logs.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def process_cores() -> tuple[int, int]:
    """(cores this process may use, processes sharing them): the CPU affinity, divided between the
    ranks of an `accelerate launch` on this machine so that they do not oversubscribe it."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return max(1, n // local), local


def set_threads() -> tuple[int, str]:
    """Torch threads for evaluation and generation: the cores that other processes leave free now.

    On a shared CPU, OpenMP threads that outnumber the free cores wait for each other at every
    parallel region: a demo step measured 5 s with 2 threads vs 0.16 s with 1 on 2 cores at load 9.
    Free cores are read from /proc/stat over 0.1 s (hardware.busy_cores_now), not from the 1-minute
    load average, which still counts the seconds before (the CLI's own start-up). Training measures
    its steps instead (finetune.speed). Children run with a short OpenMP spin (runs.py), so
    waiting threads soon sleep instead of spinning. Returns (threads, why)."""
    import torch

    from .hardware import busy_cores_now

    n, local = process_cores()
    busy = busy_cores_now()
    busy = 0.0 if busy is None else busy / local
    threads = max(1, min(n, int(n - busy + 0.5)))
    why = (f"{threads} of {n} cores: the others are busy now ({busy:.1f} cores in use)" if threads < n
           else f"{n} cores")
    if local > 1:
        why += f" (this machine's cores shared by {local} processes)"
    torch.set_num_threads(threads)
    return threads, why


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def unsloth_installed() -> bool:
    """Whether the unsloth package is present (found without importing it: it raises without a GPU)."""
    import importlib.util

    return importlib.util.find_spec("unsloth") is not None


def unsloth_available() -> bool:
    """True only on a CUDA machine with unsloth installed. Importing it elsewhere raises."""
    return cuda_available() and unsloth_installed()


def lean_transformers() -> None:
    """Call before transformers' models or generation are imported. transformers imports two packages
    whenever they are installed for features this app never uses: scikit-learn (lm-eval brings it) for
    assisted generation's dynamic threshold (transformers.generation.candidate_generator), and
    scipy.optimize for the object-detection losses (transformers.loss, imported with every model):
    about a second each of every process's start. transformers is told they are absent; other
    packages' own imports of them (lm-eval, evaluate's metrics) still work."""
    import sys

    import transformers.utils as tu
    import transformers.utils.import_utils as iu

    if "transformers.generation.candidate_generator" not in sys.modules:  # else too late: harmless
        tu.is_sklearn_available = iu.is_sklearn_available = lambda: False
    if "transformers.loss.loss_for_object_detection" not in sys.modules:
        tu.is_scipy_available = iu.is_scipy_available = lambda: False


def load_tokenizer(model_id: str, *, trust_remote_code: bool = False):
    lean_transformers()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(model_id), trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"{model_id}: a fast tokenizer is needed to map tokens to characters")
    return tok


def load_model(model_id: str, *, load_in_4bit: bool = False, trust_remote_code: bool = False,
               dtype: str | None = None):
    lean_transformers()
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    cuda = cuda_available()
    if dtype:
        kwargs["dtype"] = getattr(torch, dtype)
    elif cuda:
        kwargs["dtype"] = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        kwargs["dtype"] = torch.float32  # CPU weights in fp32; bf16 comes from autocast where the CPU has it
    if load_in_4bit:
        # bitsandbytes >= 0.48 runs NF4 load, forward and backward on a CPU too, so QLoRA is not
        # refused there (slower than LoRA per step on a CPU, but with a quarter of the memory).
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=kwargs["dtype"])
        kwargs["device_map"] = {"": 0} if cuda else {"": "cpu"}
    elif cuda:
        kwargs["device_map"] = {"": 0}
    return AutoModelForCausalLM.from_pretrained(resolve_model(model_id), **kwargs)


def load_for_inference(model_id: str, adapter_dir: str | None = None, *, trust_remote_code: bool = False,
                       load_in_4bit: bool = False):
    """(model, tokenizer) in eval mode; with an adapter, the PeftModel (use disable_adapter() for base).

    load_in_4bit: a QLoRA adapter is evaluated on the 4-bit base it was trained against."""
    tok = load_tokenizer(adapter_dir if adapter_dir and os.path.exists(os.path.join(adapter_dir, "tokenizer_config.json")) else model_id,
                         trust_remote_code=trust_remote_code)
    if adapter_dir and os.path.exists(os.path.join(adapter_dir, "config.json")) and not os.path.exists(
            os.path.join(adapter_dir, "adapter_config.json")):
        model = load_model(adapter_dir, trust_remote_code=trust_remote_code)  # a full fine-tune
    else:
        model = load_model(model_id, trust_remote_code=trust_remote_code, load_in_4bit=load_in_4bit)
        if adapter_dir:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    return model, tok


def render_prompt(tokenizer, prompt) -> str:
    """A prompt (messages or a plain string) as the text the model continues from."""
    if isinstance(prompt, list):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return prompt


def stop_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a turn: the generation config's eos ids, the tokenizer's eos, and the token
    the chat template closes an assistant turn with (e.g. <|im_end|>, <|eot_id|>, <end_of_turn>)."""
    ids: list[int] = []

    def add(v):
        for x in (v if isinstance(v, (list, tuple)) else [v]):
            if isinstance(x, int) and x >= 0 and x not in ids:
                ids.append(x)

    add(getattr(getattr(model, "generation_config", None), "eos_token_id", None))
    add(tokenizer.eos_token_id)
    if getattr(tokenizer, "chat_template", None):
        try:
            marker = "\u2063answer\u2063"
            text = tokenizer.apply_chat_template([{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}],
                                                 tokenize=False)
            tail = text[text.index(marker) + len(marker):]
            special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
            for tid in tokenizer(tail, add_special_tokens=False)["input_ids"][:3]:
                if tid in special:
                    add(tid)
                    break
        except Exception:  # noqa: BLE001 -- an odd template only loses this extra stop id
            pass
    return ids


def generate(model, tokenizer, prompts: list, *, max_new_tokens: int = 32, batch_size: int = 16,
             seed: int = 0, eos_token_ids: list[int] | None = None) -> list[str]:
    """Greedy answers for a list of prompts (message lists or strings), batched with left padding.

    Stops at any of the model's end-of-turn ids (stop_token_ids), not only tokenizer.eos_token_id."""
    import torch

    torch.manual_seed(seed)  # greedy needs no randomness; the seed is fixed and recorded anyway
    stops = eos_token_ids or stop_token_ids(model, tokenizer)
    texts = [render_prompt(tokenizer, p) for p in prompts]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    outs: list[str] = []
    device = next(model.parameters()).device
    try:
        for i in range(0, len(texts), batch_size):
            chunk = texts[i:i + batch_size]
            add_special = not any(isinstance(p, list) for p in prompts[i:i + batch_size])
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=add_special).to(device)
            with torch.no_grad():
                gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=stops or None)
            for row in gen[:, enc["input_ids"].shape[1]:]:
                outs.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    finally:
        tokenizer.padding_side = side
    return outs
