"""API-key checks shared by the GraphQL endpoint, REST v2 and the admin API: one account, one key.

REST v2 takes the key only as ``Authorization: Bearer <key>``. For GraphQL, RunPod's SDK sends
``Authorization: Bearer <key>`` (1.7.8 and later); older clients and the docs' curl examples send
``?api_key=<key>``; both are accepted. With no key configured the emulator behaves like an
account that accepts any key, but a request must still present one (the SDK never sends an empty key).
"""

from __future__ import annotations

import hmac

from starlette.requests import Request

from runpod_emulator.settings import EmulatorSettings

UNAUTHORIZED_BODY = {"errors": [{"message": "Unauthorized", "extensions": {"code": "UNAUTHENTICATED"}}]}


def presented_key(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.query_params.get("api_key") or None


def graphql_key_ok(request: Request, settings: EmulatorSettings) -> bool:
    key = presented_key(request)
    if key is None:
        return False
    if settings.api_key is None:
        return True
    return hmac.compare_digest(key.encode(), settings.api_key.get_secret_value().encode())


def rest_key_ok(request: Request, settings: EmulatorSettings) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    if settings.api_key is None:
        return True
    return hmac.compare_digest(token.strip().encode(), settings.api_key.get_secret_value().encode())


def admin_key_ok(request: Request, settings: EmulatorSettings) -> bool:
    """The admin API is open when no key is configured, and wants that key when one is."""
    return settings.api_key is None or graphql_key_ok(request, settings)
