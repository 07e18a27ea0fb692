"""Access checks for every event of the app, applied once to the built Blocks (`guard_demo`).

Every handler is wrapped so that Gradio injects the caller's `gr.OAuthProfile | None` and
`gr.OAuthToken | None` (API clients send their HF token with gradio_client's `oauth_token=`; the
engine checks it with whoami). The wrapper then:
  - refuses protected actions to anyone not logged in and on the allowlist (public mode), by the
    endpoint's api_name: everything except OPEN_APIS is protected, so endpoints added later are
    closed by default;
  - refuses any input that names a run or a saved dataset the caller does not own (it reads as
    missing), which covers the UI-only events as well;
  - makes the caller's identity available to the handler (`current()`), for owners, choices lists,
    limits and tokens.
Locally (not public mode) nothing is refused and runs have no owner.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import re
import threading
import typing
from typing import Optional

import gradio as gr

from finetune import access
from finetune.sources import hide_server_paths

# Anyone may plan and inspect; status/runs/runs_frame (the Train tab's table, loaded with the page) show own runs only.
OPEN_APIS = {"plan", "inspect_dataset", "status", "runs", "runs_frame", "sweep_status"}  # sweep_status: own studies
PRIVATE_ACTIONS = {"dry_run": "train", "resume": "resume", "delete": "train"}  # UI-only handlers that act
PRIVATE_ACTIONS |= {"chat_send": "chat", "chat_save": "chat"}
_IDENT: contextvars.ContextVar[access.Identity | None] = contextvars.ContextVar("fts_identity", default=None)
_VISITOR: contextvars.ContextVar[str] = contextvars.ContextVar("fts_visitor", default="local")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
START_LOCK = threading.Lock()


def current() -> access.Identity:
    """The identity of the request being handled (anonymous outside a guarded handler)."""
    return _IDENT.get() or access.identify(None, None)


def current_visitor() -> str:
    """Who is asking, for per-visitor limits: the username, else the anonymous visitor's address."""
    return _VISITOR.get()


def _visitor(ident: access.Identity, request) -> str:
    if ident.username:
        return f"user:{ident.username}"
    # uvicorn takes X-Forwarded-For only from a trusted proxy (FORWARDED_ALLOW_IPS), so this is not spoofable
    return f"anon:{getattr(getattr(request, 'client', None), 'host', None) or 'local'}"


def _check_inputs(ident: access.Identity, args) -> None:
    if not ident.public:
        return
    from finetune.paths import datasets_dir, runs_dir

    from pathlib import Path

    runs, dsets = runs_dir().resolve(), datasets_dir().resolve()
    for a in args:
        if not isinstance(a, str) or not a.strip() or len(a) > 4096:
            continue
        name = a.strip()
        if "/" in name or "\\" in name:  # a path into the home folder names its run or dataset
            try:
                p = Path(name).expanduser().resolve()
            except (OSError, RuntimeError, ValueError):
                continue
            for root, check in ((runs, access.check_run), (dsets, access.check_dataset)):
                if p != root and p.is_relative_to(root):
                    check(ident, p.relative_to(root).parts[0])
            continue
        if not _NAME.match(name):
            continue
        if (runs_dir() / name / "config.json").exists():
            access.check_run(ident, name)
        elif (datasets_dir() / name).is_dir():
            access.check_dataset(ident, name)


def _bind(who: tuple[access.Identity, str]):
    """Make the identity, its Hub token (the visitor's, or none) and the visitor key current for this call."""
    ident, visitor = who
    return _IDENT.set(ident), access.set_request_hub_token(access.hub_token(ident)), _VISITOR.set(visitor)


def _unbind(handles) -> None:
    _IDENT.reset(handles[0])
    access.reset_request_hub_token(handles[1])
    _VISITOR.reset(handles[2])


def _refuse(exc: Exception):
    """A refusal is an ordinary answer, not a fault: one line in the server log, no traceback."""
    import logging

    logging.getLogger("fine_tune_studio").warning("refused: %s", " ".join(str(exc).split())[:300])
    raise gr.Error(hide_server_paths(str(exc)), duration=None, print_exception=False) from None


@contextlib.contextmanager
def _no_server_paths():
    """An error a caller reads names no server folder (an upload by its file name, runs/<id>...)."""
    try:
        yield
    except gr.Error as exc:
        exc.message = hide_server_paths(str(exc.message))
        raise


def guard(fn, action: str | None):
    """fn wrapped with the identity, the permission for `action` (None: none needed) and input checks."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        hints = {}
    sig = inspect.signature(fn)
    extra = [inspect.Parameter("fts_profile", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Optional[gr.OAuthProfile]),
             inspect.Parameter("fts_token", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Optional[gr.OAuthToken]),
             inspect.Parameter("fts_request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request)]
    params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values()]

    def enter(profile, token, request, args):
        ident = access.identify(getattr(profile, "username", None) if profile else None,
                                getattr(token, "token", None) if token else None)
        try:
            if action:
                access.require(ident, action)
            _check_inputs(ident, args)
        except (access.AccessError, ValueError) as exc:
            _refuse(exc)
        return ident, _visitor(ident, request)

    if inspect.isgeneratorfunction(fn):
        def wrapper(fts_profile, fts_token, fts_request, *args, **kwargs):
            who = enter(fts_profile, fts_token, fts_request, args)
            gen = fn(*args, **kwargs)
            while True:  # Gradio steps generators in fresh contexts: set the identity for each step
                handles = _bind(who)
                try:
                    with _no_server_paths():
                        item = next(gen)
                except StopIteration:
                    return
                finally:
                    _unbind(handles)
                yield item
    elif inspect.iscoroutinefunction(fn):
        async def wrapper(fts_profile, fts_token, fts_request, *args, **kwargs):
            handles = _bind(enter(fts_profile, fts_token, fts_request, args))
            try:
                with _no_server_paths():
                    return await fn(*args, **kwargs)
            finally:
                _unbind(handles)
    else:
        def wrapper(fts_profile, fts_token, fts_request, *args, **kwargs):
            handles = _bind(enter(fts_profile, fts_token, fts_request, args))
            try:
                with _no_server_paths():
                    return fn(*args, **kwargs)
            finally:
                _unbind(handles)

    for attr in ("__name__", "__qualname__", "__doc__", "__module__"):
        try:
            setattr(wrapper, attr, getattr(fn, attr))
        except (AttributeError, TypeError):
            pass
    wrapper.__signature__ = sig.replace(parameters=extra + params)
    wrapper.__annotations__ = {**{p.name: p.annotation for p in params if p.annotation is not inspect.Parameter.empty},
                               "fts_profile": Optional[gr.OAuthProfile], "fts_token": Optional[gr.OAuthToken],
                               "fts_request": gr.Request}
    wrapper.__fts_guarded__ = action or "open"
    return wrapper


def action_for(api_name: str | None, visibility: str, fn_name: str, module: str = "") -> str | None:
    """The permission an endpoint needs: None for open ones. Unknown public endpoints are protected."""
    if module.startswith("gradio."):  # Gradio's own plumbing (gr.render's re-render): identity and input checks only
        return None
    if visibility == "private" or not api_name:
        return PRIVATE_ACTIONS.get(fn_name)
    base = re.sub(r"_\d+$", "", api_name)
    if base in OPEN_APIS:
        return None
    return {"prepare_dataset": "prepare", "augment_dataset": "augment", "ab_pair": "compare",
            "train_jobs": "train"}.get(base, base)


def guard_demo(demo: gr.Blocks) -> gr.Blocks:
    """Wrap every event handler of the built app (call after all events are defined, before launch)."""
    for block_fn in demo.fns.values():
        fn = block_fn.fn
        if fn is None or getattr(fn, "__fts_guarded__", None):
            continue
        name = getattr(fn, "__name__", "")
        block_fn.fn = guard(fn, action_for(block_fn.api_name, block_fn.api_visibility, name,
                                           getattr(fn, "__module__", "") or ""))
        if block_fn.api_name and block_fn.api_visibility != "private":
            block_fn.fn.__name__ = block_fn.api_name  # MCP tools are named after the function: use the API name
    return demo


# ---------------------------------------------------------------------------------------------
# helpers the tabs call


def start_as_caller(cfg) -> str:
    """Start a training run owned by the caller, within the public-mode limits, with only their token."""
    from finetune.runs import start_training, warm_spare

    ident = current()
    with START_LOCK:  # the limits are checked and the run started as one step
        access.check_training_limits(ident, cfg.model.model_id)
        cfg.owner = ident.owner
        env = access.child_env(ident)
        if not env and cfg.train.num_processes <= 1:
            warm_spare()  # its imports overlap the checks; one left over waits for the next run
        return start_training(cfg, env=env)


def resume_as_caller(run_id: str) -> None:
    from finetune.runs import load_config, start_run

    ident = current()
    access.check_run(ident, run_id)
    with START_LOCK:
        access.check_training_limits(ident, load_config(run_id).model.model_id)
        start_run(run_id, resume=True, env=access.child_env(ident))


def dataset_name_for_caller(name: str | None, source: str) -> str | None:
    """The saved-dataset name to prepare into: in public mode never another user's (prefixed by the
    caller's username when none is given)."""
    ident = current()
    if not ident.public:
        return name
    from pathlib import Path

    if not name:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(str(source).split(":")[-1]).stem).strip("-.") or "dataset"
        name = f"{ident.username}-{stem}"[:100]
    from finetune.paths import datasets_dir

    if (datasets_dir() / name).exists() and not access.owns(ident, access.dataset_owner(name)):
        raise gr.Error(f"a saved dataset named {name!r} exists already; choose another name", duration=None)
    return name


def record_dataset_owner(result: dict) -> dict:
    """After prepare/augment: the new saved dataset belongs to the caller."""
    from pathlib import Path

    d = (result or {}).get("dir")
    if d:
        access.set_dataset_owner(Path(d).name, current())
    return result


def visible_run_ids(run_ids: list[str]) -> list[str]:
    ident = current()
    if not ident.public:
        return run_ids
    return [r["run_id"] for r in access.visible_runs(ident, [{"run_id": r} for r in run_ids])]


def visible_runs(rows: list[dict]) -> list[dict]:
    return access.visible_runs(current(), rows)


def visible_dataset_names(names: list[str]) -> list[str]:
    return access.visible_datasets(current(), names)


def login_button():
    """gr.LoginButton on a Space (HF OAuth); locally a token field in the Hub panel does instead.

    Outside a Space, Gradio mocks the login with the machine's own HF login and fails to start
    without one, so the button is only added where OAuth is real: on a Space (SYSTEM=spaces) with
    OAuth enabled (hf_oauth gives the Space OAUTH_CLIENT_ID). With SPACE_ID set anywhere else the
    app still starts in public mode: visitors are anonymous, and API clients log in with a token."""
    import os

    import gradio.oauth

    if os.environ.get("SPACE_ID") and os.environ.get("SYSTEM") == "spaces" and gradio.oauth.OAUTH_CLIENT_ID:
        return gr.LoginButton()
    return None
