"""Lease tokens: minted by the controller, verified offline by the gpu_server.

This is the one implementation both packages use. It is stdlib-only so the controller image, which has no
speech dependencies, can import it.

A token is ``v1.<payload>.<signature>`` where payload is base64url(JSON ``{"lid", "pod", "exp", "slot"?,
"gen"?}``) and signature is base64url(HMAC-SHA256(secret, "v1." + payload)). ``exp`` is Unix seconds. The
secret is the pod's own (injected by the controller as ``GPU_SERVER_SECRET`` when the pod is created), so a
token for one pod is worthless on another.

Tokens end with their lease: the controller issues them for about one heartbeat interval (each heartbeat
brings a fresh one), and names the pod slot and the lease's generation on it (``gen``: when the slot was
granted to it, in ms; a slot's next lease always has a larger one). ``SlotGuard`` on the pod refuses a token
once a newer lease's token for the same slot has been seen, and tells the server which of its open sockets
belong to the lease that was superseded, so they are closed: a released lease's client cannot keep using a
slot that someone else now holds.

Errors: ``TokenError`` and its subclasses ``TokenMalformed``, ``TokenForged``, ``TokenExpired``. Messages
never contain the token or the secret, and ``RedactTokens`` keeps ``?token=`` out of the server's logs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
from dataclasses import dataclass

VERSION = "v1"
# Accept tokens up to this many seconds past ``exp``: covers clock skew between controller and pod.
CLOCK_SKEW_S = 5.0


_TOKEN_IN_QUERY = re.compile(r"(token=)[^&\s\"']+")


class RedactTokens(logging.Filter):
    """Blank ``token=...`` in log lines (uvicorn logs every WebSocket's path with its query string)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "token=" in message:
            record.msg, record.args = _TOKEN_IN_QUERY.sub(r"\1<redacted>", message), None
        return True


REDACT_TOKENS = RedactTokens()


class TokenError(Exception):
    """A lease token was refused."""


class TokenMalformed(TokenError):
    pass


class TokenForged(TokenError):
    pass


class TokenExpired(TokenError):
    pass


class TokenSuperseded(TokenError):
    pass


@dataclass(frozen=True, slots=True)
class TokenClaims:
    lease_id: str
    pod_id: str
    expires_at: float
    slot: int | None = None  # the pod slot the lease holds (None: a token from before slots were named)
    generation: int = 0  # when the slot was granted to this lease (ms); larger is newer


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: str, signed_part: str) -> str:
    if not secret:
        raise TokenError("no token secret is configured")
    return _b64e(hmac.new(secret.encode(), signed_part.encode("ascii"), hashlib.sha256).digest())


def issue_token(
    secret: str, lease_id: str, pod_id: str, expires_at: float, slot: int | None = None, generation: int = 0
) -> str:
    body: dict[str, object] = {"lid": lease_id, "pod": pod_id, "exp": int(expires_at)}
    if slot is not None:
        body |= {"slot": int(slot), "gen": int(generation)}
    payload = _b64e(json.dumps(body, separators=(",", ":")).encode())
    signed_part = f"{VERSION}.{payload}"
    return f"{signed_part}.{_sign(secret, signed_part)}"


def verify_token(secret: str, token: str, now: float, pod_id: str | None = None) -> TokenClaims:
    """Check signature, expiry and (when given) the pod; return the claims or raise a TokenError."""
    if not token or len(token) > 2048:
        raise TokenMalformed("missing or oversized token")
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != VERSION:
        raise TokenMalformed("token is not a v1 lease token")
    signed_part = f"{parts[0]}.{parts[1]}"
    if not hmac.compare_digest(_sign(secret, signed_part), parts[2]):
        raise TokenForged("token signature does not match")
    try:
        claims = json.loads(_b64d(parts[1]))
        slot = claims.get("slot")
        result = TokenClaims(str(claims["lid"]), str(claims["pod"]), float(claims["exp"]),
                             None if slot is None else int(slot), int(claims.get("gen", 0)))
    except (ValueError, KeyError, TypeError) as e:
        raise TokenMalformed("token payload is not valid") from e
    if now > result.expires_at + CLOCK_SKEW_S:
        raise TokenExpired("token has expired")
    if pod_id is not None and result.pod_id != pod_id:
        raise TokenForged("token was issued for another pod")
    return result


class SlotGuard:
    """The newest lease seen on each slot of this pod. Pure bookkeeping: the server asks ``admit`` for every
    verified token and closes the connections it names."""

    def __init__(self) -> None:
        self._newest: dict[int, tuple[int, str]] = {}  # slot -> (generation, lease id)

    def admit(self, claims: TokenClaims) -> str | None:
        """Accept the token's lease on its slot, or raise ``TokenSuperseded``. Returns the lease id it
        supersedes (whose connections must be closed), or None."""
        if claims.slot is None:
            return None
        newest = self._newest.get(claims.slot)
        if newest is not None and (claims.generation, claims.lease_id) < newest:
            raise TokenSuperseded(f"a newer lease holds slot {claims.slot} of this pod")
        self._newest[claims.slot] = (claims.generation, claims.lease_id)
        if newest is not None and newest[1] != claims.lease_id:
            return newest[1]
        return None
