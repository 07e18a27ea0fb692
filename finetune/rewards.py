"""Reward functions for GRPO (finetune/grpo.py): verifiable checks of a completion, each in [0, 1].

Built in: `exact` (matches the reference answer after normalising case, spaces and end punctuation),
`numeric` (the last number of the completion equals the reference's last number, whatever the
formatting: 1,234 / $1234.00 / 1.234e3), `format` (a regular expression is found), `json` (the
completion is JSON, optionally checked against a small JSON schema: type, required, properties,
enum, items; partial credit for the share of checks that pass) and `length` (characters within
bounds; outside, the ratio to the nearest bound, so long answers still rank). `build_rewards(cfg.grpo)`
returns them as named functions in TRL's reward-function form, `f(prompts, completions, **columns) -> list[float | None]`: TRL passes
the dataset's other columns (the reference `answer`) as keyword arguments, and the function's
name becomes its metric (`rewards/<name>/mean`). None means "cannot score" (no reference).

An owner may add functions from a Python file of their own (`reward_file`): every top-level
function whose name starts with `reward` is used. That runs the file's code, so it is refused in
public mode (finetune/caller.py): on a public Space only the built-in rewards exist.
Plain Python, no heavy imports.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Callable

REWARDS = ("exact", "numeric", "format", "json", "length")
NEEDS_REFERENCE = ("exact", "numeric")
REWARD_HELP = {
    "exact": "exact match with the reference answer (case, spaces and end punctuation ignored)",
    "numeric": "the last number in the answer equals the reference's (1,234 = 1234.0 = $1234)",
    "format": "the answer matches a regular expression",
    "json": "the answer is valid JSON (and fits the JSON schema, when one is given)",
    "length": "the answer's length in characters lies within bounds",
}
MAX_REGEX_CHARS = 500
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")


class RewardError(ValueError):
    """A bad reward setting, with the setting it is about."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


# ---------------------------------------------------------------------------------------------
# Text helpers


def completion_text(c: Any) -> str:
    """A completion as text: TRL passes a string, or a list of messages for chat prompts."""
    if isinstance(c, str):
        return c
    if isinstance(c, list):
        return "".join(str(m.get("content") or "") for m in c if isinstance(m, dict) and m.get("role") != "user")
    if isinstance(c, dict):
        return str(c.get("content") or "")
    return "" if c is None else str(c)


def normalise(text: str) -> str:
    text = " ".join(str(text).strip().lower().split())
    return text.strip(" .!?;:\"'`")


def last_number(text: str) -> float | None:
    """The last number written in text, or None (thousands commas, signs, decimals, exponents)."""
    found = _NUMBER.findall(str(text))
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def parse_json(text: str) -> tuple[bool, Any]:
    """(ok, value): the completion as JSON, accepting a ```json fenced block or the outermost
    {...} / [...] inside surrounding words."""
    t = text.strip()
    fence = re.search(r"```(?:json)?\s*([\s\S]*?)```", t)
    candidates = [fence.group(1)] if fence else []
    candidates.append(t)
    for open_, close in (("{", "}"), ("[", "]")):
        i, j = t.find(open_), t.rfind(close)
        if 0 <= i < j:
            candidates.append(t[i:j + 1])
    for cand in candidates:
        try:
            return True, json.loads(cand)
        except ValueError:
            continue
    return False, None


_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _type_ok(value: Any, typ: str) -> bool:
    if typ == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if typ == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES.get(typ, object))


def schema_checks(value: Any, schema: dict) -> tuple[int, int]:
    """(passed, total) checks of value against a JSON-schema subset: type, enum, required,
    properties and items (recursively)."""
    passed = total = 0
    typ = schema.get("type")
    if typ:
        types = typ if isinstance(typ, list) else [typ]
        total += 1
        if not any(_type_ok(value, t) for t in types):
            return passed, total + _count(schema) - 1  # the rest cannot pass either
        passed += 1
    if "enum" in schema:
        total += 1
        passed += value in schema["enum"]
    if isinstance(value, dict):
        for key in schema.get("required") or []:
            total += 1
            passed += key in value
        for key, sub in (schema.get("properties") or {}).items():
            if key in value and isinstance(sub, dict):
                p, t = schema_checks(value[key], sub)
                passed, total = passed + p, total + t
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            p, t = schema_checks(item, schema["items"])
            passed, total = passed + p, total + t
    return passed, total


def _count(schema: dict) -> int:
    n = (1 if schema.get("type") else 0) + (1 if "enum" in schema else 0) + len(schema.get("required") or [])
    return n + sum(_count(s) for s in (schema.get("properties") or {}).values() if isinstance(s, dict))


# ---------------------------------------------------------------------------------------------
# Parsing the settings (config validation calls these: errors name the setting)


def parse_reward_names(spec: str, field_name: str = "grpo.reward") -> list[str]:
    names = [n.strip().lower() for n in str(spec or "").split(",") if n.strip()]
    bad = [n for n in names if n not in REWARDS]
    if bad:
        raise RewardError(field_name, f"unknown reward {bad[0]!r}; choose from {', '.join(REWARDS)}")
    if len(set(names)) != len(names):
        raise RewardError(field_name, "names a reward twice")
    return names


def parse_weights(spec: str, n: int, field_name: str = "grpo.reward_weights") -> list[float] | None:
    """Weights for n reward functions (the built-in ones, then the file's); empty = all 1."""
    parts = [p.strip() for p in str(spec or "").split(",") if p.strip()]
    if not parts:
        return None
    try:
        weights = [float(p) for p in parts]
    except ValueError:
        raise RewardError(field_name, f"{spec!r} is not a comma-separated list of numbers") from None
    if any(not math.isfinite(w) for w in weights):
        raise RewardError(field_name, "weights must be finite numbers")
    if n and len(weights) != n:
        raise RewardError(field_name, f"{len(weights)} weights for {n} reward functions: give one per function")
    if not any(w != 0 for w in weights):
        raise RewardError(field_name, "every weight is 0: nothing would be rewarded")
    return weights


def compile_regex(pattern: str, field_name: str = "grpo.format_regex") -> re.Pattern:
    if not pattern:
        raise RewardError(field_name, "is empty: the format reward needs a regular expression")
    if len(pattern) > MAX_REGEX_CHARS:
        raise RewardError(field_name, f"is longer than {MAX_REGEX_CHARS} characters")
    try:
        return re.compile(pattern, re.DOTALL)
    except re.error as exc:
        raise RewardError(field_name, f"is not a valid regular expression ({exc})") from None


def parse_schema(text: str, field_name: str = "grpo.json_schema") -> dict | None:
    if not str(text or "").strip():
        return None
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise RewardError(field_name, f"is not valid JSON ({exc})") from None
    if not isinstance(schema, dict):
        raise RewardError(field_name, "must be a JSON object such as {\"type\": \"object\", \"required\": [\"name\"]}")
    return schema


# ---------------------------------------------------------------------------------------------
# The reward functions


def _named(name: str, fn: Callable) -> Callable:
    fn.__name__ = fn.__qualname__ = name
    return fn


def _references(kw: dict, n: int) -> list:
    ref = kw.get("answer")
    return list(ref) if isinstance(ref, (list, tuple)) and len(ref) == n else [None] * n


def exact_reward(completions, **kw) -> list[float | None]:
    refs = _references(kw, len(completions))
    return [None if r is None else float(normalise(completion_text(c)) == normalise(r))
            for c, r in zip(completions, refs)]


def numeric_reward(completions, **kw) -> list[float | None]:
    out: list[float | None] = []
    for c, r in zip(completions, _references(kw, len(completions))):
        want = None if r is None else last_number(str(r))
        got = last_number(completion_text(c))
        if want is None:
            out.append(None)
        else:
            out.append(float(got is not None and math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9)))
    return out


def format_reward(pattern: str) -> Callable:
    rx = compile_regex(pattern)
    return _named("format", lambda completions, **kw: [float(rx.search(completion_text(c)) is not None)
                                                       for c in completions])


def json_reward(schema: dict | None) -> Callable:
    def score(completions, **kw):
        out = []
        for c in completions:
            ok, value = parse_json(completion_text(c))
            if not ok:
                out.append(0.0)
            elif schema is None:
                out.append(1.0)
            else:
                passed, total = schema_checks(value, schema)
                out.append(0.5 + 0.5 * (passed / total if total else 1.0))
        return out
    return _named("json", score)


def length_reward(min_chars: int, max_chars: int) -> Callable:
    def score(completions, **kw):
        out = []
        for c in completions:
            n = len(completion_text(c).strip())
            if n < min_chars:
                out.append(n / min_chars)
            elif max_chars and n > max_chars:
                out.append(max_chars / n)  # never flat 0: a group of long answers still ranks by length
            else:
                out.append(1.0)
        return out
    return _named("length", score)


def refuse_in_public() -> None:
    from .caller import public_mode

    if public_mode():
        raise RewardError("grpo.reward_file", "custom reward code is not allowed on a public app (no visitor "
                                              "code runs on the server): use the built-in rewards")


def load_reward_file(path: str) -> list[Callable]:
    """The reward functions of an owner's Python file: its top-level functions named reward*.
    Runs the file's code: refused in public mode, where no visitor code may run on the server."""
    import importlib.util

    refuse_in_public()
    p = Path(path).expanduser()
    if p.suffix != ".py" or not p.is_file():
        raise RewardError("grpo.reward_file", f"{p.name or path} is not a Python (.py) file that exists")
    spec = importlib.util.spec_from_file_location(f"fts_rewards_{abs(hash(str(p.resolve())))}", p)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 -- the owner's code: say what failed, where
        raise RewardError("grpo.reward_file", f"{p.name} failed to load: {type(exc).__name__}: {exc}") from None
    funcs = [v for k, v in vars(module).items()
             if k.startswith("reward") and callable(v) and getattr(v, "__module__", None) == module.__name__]
    if not funcs:
        raise RewardError("grpo.reward_file", f"{p.name} defines no function whose name starts with 'reward'")
    return funcs


def build_rewards(g) -> tuple[list[Callable], list[float] | None]:
    """(functions, weights) for a GrpoConfig: the built-in rewards named in g.reward, in order, then
    the reward file's functions."""
    funcs: list[Callable] = []
    for name in parse_reward_names(g.reward):
        if name == "exact":
            funcs.append(_named("exact", exact_reward))
        elif name == "numeric":
            funcs.append(_named("numeric", numeric_reward))
        elif name == "format":
            funcs.append(format_reward(g.format_regex))
        elif name == "json":
            funcs.append(json_reward(parse_schema(g.json_schema)))
        else:
            funcs.append(length_reward(g.length_min_chars, g.length_max_chars))
    if g.reward_file:
        funcs += load_reward_file(g.reward_file)
    if not funcs:
        raise RewardError("grpo.reward", "no reward function: pick at least one (exact, numeric, format, json, "
                                         "length) or a reward file")
    return funcs, parse_weights(g.reward_weights, len(funcs))
