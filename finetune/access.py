"""Who may do what: public mode, identities, the allowlist, ownership of runs and datasets, limits.

Public mode is on when SPACE_ID is set, FINETUNE_PUBLIC=1, or the app listens on a non-loopback
address (`set_listen_address`). There:
  - anyone may plan and inspect an upload (no check);
  - only logged-in users on the allowlist may train, evaluate, compare, push, stop or resume
    (`require`). The allowlist is the Space owner (SPACE_ID's owner part) plus FINETUNE_ALLOWED_USERS;
  - runs and saved datasets belong to the user who made them: others neither see nor touch them
    (`check_run`, `visible_runs`, dataset owners); a run someone else owns reads as "no such run";
  - Hub calls never use the owner's HF_TOKEN secret implicitly (`lock_down_hub`): a visitor's load
    uses that visitor's token or none; training children get the visitor's token only;
  - limits: one active training per user, FINETUNE_MAX_TRAININGS processes in all, and base models
    up to FINETUNE_MAX_MODEL_B billion parameters (the planner's size).
Locally (loopback, no SPACE_ID) everything is allowed and runs have no owner.

An identity comes from Gradio's OAuth profile (the Space's login) or, for API clients, from an HF
token they present, checked with the Hub's whoami. The engine never sees gradio: ui/ turns
gr.OAuthProfile / gr.OAuthToken into plain strings and calls `identify`.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from dataclasses import dataclass

from .caller import (  # noqa: F401 -- who is calling lives below the run and data layers; re-exported here
    public_mode,
    request_hub_token,
    reset_request_hub_token,
    set_listen_address,
    set_request_hub_token,
)

PROTECTED = ("train", "evaluate", "compare", "push", "stop", "resume", "vote", "export_votes", "diagnose",
             "augment", "prepare", "deploy", "delete", "export")
_WHOAMI: dict[str, tuple[float, str | None]] = {}
_WHOAMI_TTL_S = 300.0
_LOCK = threading.Lock()


class AccessError(PermissionError):
    """Refused: the message says why and what to do."""


@dataclass(frozen=True)
class Identity:
    username: str | None  # None: anonymous visitor (public mode) or the local user
    token: str | None = None  # the visitor's own HF token; never the Space owner's secret
    public: bool = False

    @property
    def owner(self) -> str:
        """What a run or dataset made by this identity records as its owner ('' locally)."""
        return (self.username or "") if self.public else ""


def space_owner() -> str | None:
    sid = os.environ.get("SPACE_ID") or ""
    return sid.split("/")[0] if "/" in sid else None


def allowed_users() -> set[str]:
    users = {u.strip().lower() for u in os.environ.get("FINETUNE_ALLOWED_USERS", "").split(",") if u.strip()}
    if space_owner():
        users.add(space_owner().lower())
    return users


def lock_down_hub() -> None:
    """In public mode, stop huggingface_hub from sending the owner's HF_TOKEN on its own accord."""
    if not public_mode():
        return
    os.environ["HF_HUB_DISABLE_IMPLICIT_TOKEN"] = "1"
    try:
        from huggingface_hub import constants

        constants.HF_HUB_DISABLE_IMPLICIT_TOKEN = True
    except ImportError:
        pass


def _whoami(token: str) -> str | None:
    """The Hub username a token belongs to (cached a few minutes by the token's hash), or None."""
    key = hashlib.sha256(token.encode()).hexdigest()
    now = time.time()
    with _LOCK:
        hit = _WHOAMI.get(key)
        if hit and now - hit[0] < _WHOAMI_TTL_S:
            return hit[1]
    try:
        from huggingface_hub import HfApi

        info = HfApi().whoami(token=token)
        name = info.get("name") if info.get("type", "user") == "user" else None
    except Exception:
        name = None
    with _LOCK:
        _WHOAMI[key] = (now, name)
    return name


def identify(profile_username: str | None = None, token: str | None = None) -> Identity:
    """The caller: from the OAuth profile (session) or, failing that, a token checked with whoami."""
    if not public_mode():
        return Identity(username=profile_username or None, token=token or None, public=False)
    name = profile_username or None
    if name is None and token:
        name = _whoami(token)
        if name is None:
            token = None  # an invalid token is no identity and no credential
    return Identity(username=name, token=token or None, public=True)


def may(identity: Identity, action: str | None) -> bool:
    """Any named action needs the allowlist in public mode (PROTECTED lists the known ones; a new
    endpoint's action is protected too). None: open to anyone."""
    if not identity.public or action is None:
        return True
    return bool(identity.username) and identity.username.lower() in allowed_users()


def require(identity: Identity, action: str) -> None:
    """Raise AccessError unless this identity may do `action` (train, evaluate, compare, push, ...)."""
    if may(identity, action):
        return
    if not identity.username:
        raise AccessError(f"Log in with your Hugging Face account to {action}: on this public Space anyone may "
                          "plan and inspect data, but training, evaluating, comparing and pushing need a login.")
    raise AccessError(f"{identity.username} is not on this Space's allowlist, so cannot {action}. The Space owner "
                      "can add you in FINETUNE_ALLOWED_USERS, or duplicate the Space to train on your own.")


# ---------------------------------------------------------------------------------------------
# ownership


def owns(identity: Identity, owner: str | None) -> bool:
    if not identity.public:
        return True
    return bool(identity.username) and (owner or "").lower() == identity.username.lower()


def check_run(identity: Identity, run_id: str) -> None:
    """A run someone else owns reads as missing: its existence is not disclosed."""
    from .paths import read_json
    from .runs import RunError, run_dir

    d = run_dir(run_id)  # validates the id; raises "no run" for a missing one
    owner = (read_json(d / "config.json", default={}) or {}).get("owner")
    if not owns(identity, owner):
        raise RunError(f"no run {run_id!r}")


def visible_runs(identity: Identity, runs: list[dict]) -> list[dict]:
    """Only the caller's own runs (public mode); each row needs 'run_id'."""
    if not identity.public:
        return runs
    from .paths import read_json
    from .runs import runs_dir

    out = []
    for r in runs:
        owner = (read_json(runs_dir() / r["run_id"] / "config.json", default={}) or {}).get("owner")
        if owns(identity, owner):
            out.append(r)
    return out


_DS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _owner_file(name: str):
    from .paths import datasets_dir

    if not _DS_NAME.match(name or ""):
        raise AccessError(f"invalid dataset name {name!r}")
    d = datasets_dir() / ".owners"
    d.mkdir(exist_ok=True)
    return d / f"{name}.json"


def set_dataset_owner(name: str, identity: Identity) -> None:
    from .paths import atomic_write_json

    atomic_write_json(_owner_file(name), {"owner": identity.owner})


def dataset_owner(name: str) -> str:
    from .paths import read_json

    return (read_json(_owner_file(name), default={}) or {}).get("owner", "")


def visible_datasets(identity: Identity, names: list[str]) -> list[str]:
    return [n for n in names if owns(identity, dataset_owner(n))] if identity.public else names


def check_dataset(identity: Identity, source: str) -> None:
    """A saved dataset (a bare name under datasets/) must belong to the caller in public mode."""
    if not identity.public or not source or ":" in source or "/" in source or "\\" in source:
        return
    if not _DS_NAME.match(source) or not owns(identity, dataset_owner(source)):
        raise AccessError(f"no saved dataset {source!r}")


# ---------------------------------------------------------------------------------------------
# limits (public mode)


def max_trainings() -> int:
    return max(1, int(os.environ.get("FINETUNE_MAX_TRAININGS", "2")))


def max_model_b() -> float:
    return float(os.environ.get("FINETUNE_MAX_MODEL_B", "3"))


def check_training_limits(identity: Identity, model_id: str) -> None:
    """One active training per user, a cap on all trainings, a maximum base-model size."""
    if not identity.public:
        return
    from .runs import ACTIVE, list_runs, runs_dir
    from .paths import read_json

    active = [r for r in list_runs() if r.get("state") in ACTIVE]
    mine = [r for r in active if owns(identity, (read_json(runs_dir() / r["run_id"] / "config.json", default={}) or {}).get("owner"))]
    if mine:
        raise AccessError(f"you already have a training running ({mine[0]['run_id']}): on this public Space each "
                          "user trains one model at a time; stop it or wait until it ends")
    if len(active) >= max_trainings():
        raise AccessError(f"this Space is running {len(active)} trainings, its limit (FINETUNE_MAX_TRAININGS="
                          f"{max_trainings()}); try again when one ends")
    if model_id.startswith("builtin:"):
        return
    try:
        from .plan import model_spec

        spec = model_spec(model_id)
        params_b = float(spec.get("params") or 0) / 1e9 or float(spec.get("params_b") or 0)
    except Exception as exc:
        raise AccessError(f"cannot tell the size of {model_id} ({exc}); this public Space only trains models it "
                          f"knows to be at most {max_model_b():g}B parameters") from None
    if params_b > max_model_b():
        raise AccessError(f"{model_id} has about {params_b:.1f}B parameters; this public Space trains models up to "
                          f"{max_model_b():g}B (FINETUNE_MAX_MODEL_B)")


# ---------------------------------------------------------------------------------------------
# tokens


def hub_token(identity: Identity, *, for_push: bool = False):
    """The token a Hub call made for this caller may use: theirs, or none (False) in public mode.

    Locally: the caller's typed token, else None (huggingface_hub's own HF_TOKEN / login). On a
    public Space the owner's HF_TOKEN secret serves only the owner's own pushes."""
    if identity.token:
        return identity.token
    if not identity.public:
        return None
    if for_push and identity.username and space_owner() and identity.username.lower() == space_owner().lower():
        return os.environ.get("HF_TOKEN") or False
    return False


def child_env(identity: Identity) -> dict[str, str]:
    """Environment overrides for a training child: the caller's token only (never the owner's secret)."""
    if not identity.public:
        return {"HF_TOKEN": identity.token} if identity.token else {}
    # FINETUNE_TOKEN_SCOPED: this process's HF_TOKEN is the visitor's own, so the library default may use it.
    return {"HF_TOKEN": identity.token or "", "HUGGING_FACE_HUB_TOKEN": "", "HF_HUB_DISABLE_IMPLICIT_TOKEN": "0"
            if identity.token else "1", "FINETUNE_TOKEN_SCOPED": "1"}
