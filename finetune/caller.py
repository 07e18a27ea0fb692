"""Who is calling, at the bottom of the engine: whether the app is public, and the Hub token a load made
for the current request may send. Plain facts with no policy and no imports from the engine, so the
data layer (Hub loads, source checks) can ask without reaching up to runs or ownership (access.py,
which builds the policy on top of these and re-exports them).
"""

from __future__ import annotations

import contextvars
import ipaddress
import os

_LISTEN: dict[str, str | None] = {"address": None}
# The Hub token for loads made while handling one request (set by ui/guard.py): None = the library's
# default (local use), False = send none, a string = the visitor's own token.
_REQUEST_TOKEN: contextvars.ContextVar = contextvars.ContextVar("fts_hub_token", default=None)


def set_listen_address(address: str | None) -> None:
    """The app tells the engine where it listens; a non-loopback address turns public mode on."""
    _LISTEN["address"] = address


def _is_loopback(address: str | None) -> bool:
    if not address or address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def public_mode() -> bool:
    if os.environ.get("SPACE_ID") or os.environ.get("FINETUNE_PUBLIC", "").lower() in ("1", "true", "yes"):
        return True
    return not _is_loopback(_LISTEN["address"] or os.environ.get("GRADIO_SERVER_NAME"))


def request_hub_token():
    """The token a Hub load made for the current request may send (see _REQUEST_TOKEN)."""
    tok = _REQUEST_TOKEN.get()
    if tok is None and public_mode() and os.environ.get("FINETUNE_TOKEN_SCOPED") != "1":
        return False  # no request context on a public Space: never fall back to the owner's secret
    return tok


def set_request_hub_token(token):
    return _REQUEST_TOKEN.set(token)


def reset_request_hub_token(handle) -> None:
    _REQUEST_TOKEN.reset(handle)
