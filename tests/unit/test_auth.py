"""Lease tokens: one implementation, minted by the controller and checked offline by the gpu_server."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpu_server.auth import (
    SlotGuard,
    TokenExpired,
    TokenForged,
    TokenMalformed,
    TokenSuperseded,
    issue_token,
    verify_token,
)

SECRET = "pod-secret-1"


def test_round_trip_returns_claims():
    token = issue_token(SECRET, "lease-1", "pod-a", expires_at=1_000)
    claims = verify_token(SECRET, token, now=900, pod_id="pod-a")
    assert (claims.lease_id, claims.pod_id, claims.expires_at) == ("lease-1", "pod-a", 1_000)


def test_expired_token_is_refused():
    token = issue_token(SECRET, "lease-1", "pod-a", expires_at=1_000)
    with pytest.raises(TokenExpired):
        verify_token(SECRET, token, now=1_100)


def test_other_secret_or_pod_is_forged():
    token = issue_token(SECRET, "lease-1", "pod-a", expires_at=1_000)
    with pytest.raises(TokenForged):
        verify_token("another-secret", token, now=900)
    with pytest.raises(TokenForged):
        verify_token(SECRET, token, now=900, pod_id="pod-b")


def test_tampered_payload_is_forged():
    token = issue_token(SECRET, "lease-1", "pod-a", expires_at=1_000)
    other = issue_token(SECRET, "lease-2", "pod-a", expires_at=9_999)
    head, _, sig = token.split(".")
    _, payload, _ = other.split(".")
    with pytest.raises(TokenForged):
        verify_token(SECRET, f"{head}.{payload}.{sig}", now=900)


@given(st.text(max_size=300))
def test_garbage_never_verifies_and_never_leaks(garbage):
    with pytest.raises((TokenMalformed, TokenForged)) as info:
        verify_token(SECRET, garbage, now=0)
    assert SECRET not in str(info.value)


def test_tokens_name_their_slot_and_generation_and_old_ones_still_verify():
    token = issue_token(SECRET, "lease-2", "pod-a", expires_at=1_000, slot=3, generation=1_700_000_000_123)
    claims = verify_token(SECRET, token, now=900, pod_id="pod-a")
    assert (claims.slot, claims.generation) == (3, 1_700_000_000_123)
    legacy = verify_token(SECRET, issue_token(SECRET, "lease-1", "pod-a", expires_at=1_000), now=900)
    assert (legacy.slot, legacy.generation) == (None, 0)


def test_a_newer_lease_on_a_slot_supersedes_the_older_one():
    guard = SlotGuard()

    def claims(lease, slot, gen):
        return verify_token(SECRET, issue_token(SECRET, lease, "pod-a", 1_000, slot=slot, generation=gen), now=900)

    assert guard.admit(claims("old", 0, 100)) is None
    assert guard.admit(claims("old", 0, 100)) is None  # the same lease reconnecting
    assert guard.admit(claims("other-slot", 1, 50)) is None  # slots are independent
    assert guard.admit(claims("new", 0, 200)) == "old"  # close the old lease's sockets
    with pytest.raises(TokenSuperseded):
        guard.admit(claims("old", 0, 100))  # its token, still unexpired, is refused from now on
    assert guard.admit(claims("new", 0, 200)) is None
