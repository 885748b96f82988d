"""REST v2 rate limits: headers on every authenticated answer, 429 with Retry-After, and how a policy is set."""

from __future__ import annotations

import httpx
import pytest
import runpod
from pydantic import ValidationError

from runpod_emulator.cli import _parser, settings_from_args
from runpod_emulator.clock import FakeClock
from runpod_emulator.ratelimit import DOCUMENTED_EXAMPLE, RateLimiter, RateLimitPolicy
from runpod_emulator.settings import EmulatorSettings

from .conftest import RTX_4090, StartEmulator, admin, graphql, rest
from .contract import ContractChecker

POD = {"name": "p", "image": "img", "gpu": {"id": RTX_4090}}


def windows(header: str) -> dict[str, dict[str, int]]:
    """``"minute";r=5;t=60, ...`` -> {"minute": {"r": 5, "t": 60}, ...}"""
    parsed = {}
    for item in header.split(","):
        name, *params = item.strip().split(";")
        parsed[name.strip('"')] = {k: int(v) for k, v in (p.split("=") for p in params)}
    return parsed


def test_the_default_policy_is_the_documented_example():
    assert EmulatorSettings().rate_limit == DOCUMENTED_EXAMPLE == "60/minute,3000/hour,50000/day"
    assert RateLimitPolicy.parse(DOCUMENTED_EXAMPLE).header() == (
        '"minute";q=60;w=60, "hour";q=3000;w=3600, "day";q=50000;w=86400'
    )


def test_every_authenticated_answer_carries_the_headers_and_counts_down(start_emulator: StartEmulator):
    clock = FakeClock()
    server = start_emulator(clock=clock, rate_limit=DOCUMENTED_EXAMPLE)
    with rest(server) as client:
        answers = [
            client.get("/v2/pods"),  # 200
            client.post("/v2/pods", json={**POD, "bogus": 1}),  # 422
            client.get("/v2/pods/nosuchpod00000"),  # 404
            client.post("/v2/pods", json=POD),  # 201
        ]
        clock.advance(10)
        answers.append(client.get("/v2/catalog/gpus"))
    for answer in answers:
        assert answer.headers["RateLimit-Policy"] == '"minute";q=60;w=60, "hour";q=3000;w=3600, "day";q=50000;w=86400'
    remaining = [windows(a.headers["RateLimit"]) for a in answers]
    assert [r["minute"]["r"] for r in remaining] == [59, 58, 57, 56, 55]
    assert [r["hour"]["r"] for r in remaining] == [2999, 2998, 2997, 2996, 2995]
    assert remaining[0]["minute"]["t"] == 60 and remaining[-1]["minute"]["t"] == 50
    assert remaining[-1]["day"]["t"] == 86400 - 10


def test_a_spent_window_is_429_with_retry_after_until_it_resets(start_emulator: StartEmulator):
    clock = FakeClock()
    server = start_emulator(clock=clock, rate_limit="3/minute,1000/hour")
    with rest(server) as client:
        for _ in range(3):
            assert client.get("/v2/pods").status_code == 200
        clock.advance(20)
        refused = client.get("/v2/pods")
        assert refused.status_code == 429
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.headers["Retry-After"] == "40"
        assert windows(refused.headers["RateLimit"])["minute"] == {"r": 0, "t": 40}
        assert refused.json()["title"] == "Too Many Requests"
        for _ in range(5):  # refused calls do not use quota, nor does anything else happen
            assert client.post("/v2/pods", json=POD).status_code == 429
        assert runpod.get_pods() == []  # GraphQL has no documented limit and is not throttled
        assert graphql(server, "{ myself { id } }").status_code == 200
        clock.advance(40)
        again = client.get("/v2/pods")
        assert again.status_code == 200
        assert windows(again.headers["RateLimit"])["minute"] == {"r": 2, "t": 60}
        assert windows(again.headers["RateLimit"])["hour"]["r"] == 1000 - 4


def test_retry_after_names_the_longest_spent_window(start_emulator: StartEmulator):
    clock = FakeClock()
    server = start_emulator(clock=clock, rate_limit="2/10s,3/hour")
    with rest(server) as client:
        assert [client.get("/v2/pods").status_code for _ in range(3)] == [200, 200, 429]
        assert client.get("/v2/pods").headers["Retry-After"] == "10"
        clock.advance(10)
        assert client.get("/v2/pods").status_code == 200  # the hour's third call
        clock.advance(10)
        refused = client.get("/v2/pods")
        assert refused.status_code == 429 and refused.headers["Retry-After"] == str(3600 - 20)
        assert refused.headers["RateLimit-Policy"] == '"10s";q=2;w=10, "hour";q=3;w=3600'


def test_off_means_no_headers_and_no_limit(start_emulator: StartEmulator):
    server = start_emulator(rate_limit="off")
    with rest(server, checker=ContractChecker(rate_limited=False)) as client:
        answers = [client.get("/v2/pods") for _ in range(120)]
    assert all(a.status_code == 200 and "ratelimit" not in a.headers for a in answers)


def test_a_policy_from_the_environment_a_flag_or_the_admin_api(start_emulator: StartEmulator, monkeypatch):
    monkeypatch.setenv("EMULATOR_RATE_LIMIT", "5/minute, 100/hour")
    assert EmulatorSettings().rate_limit == "5/minute,100/hour"
    args = _parser().parse_args(["serve", "--rate-limit", "off"])
    assert settings_from_args(args).rate_limit == "off"  # the flag wins over the environment
    monkeypatch.setenv("EMULATOR_RATE_LIMIT", "sixty a minute")
    with pytest.raises(ValidationError, match="QUOTA/WINDOW"):
        EmulatorSettings()
    monkeypatch.delenv("EMULATOR_RATE_LIMIT")

    clock = FakeClock()
    server = start_emulator(clock=clock, rate_limit="off")
    assert admin(server, "PUT", "/rate-limit", json={"policy": "2/minute"}).json()["windows"] == [
        {"name": "minute", "quota": 2, "seconds": 60, "remaining": 2, "reset_s": 60}]
    with rest(server) as client:
        assert [client.get("/v2/pods").status_code for _ in range(3)] == [200, 200, 429]
    assert admin(server, "GET", "/rate-limit").json()["windows"][0]["remaining"] == 0
    assert admin(server, "PUT", "/rate-limit", json={"policy": "fast"}).status_code == 422
    assert admin(server, "PUT", "/rate-limit", json={"policy": "off"}).json() == {"policy": "off", "windows": []}
    with rest(server, checker=ContractChecker(rate_limited=False)) as client:
        assert client.get("/v2/pods").status_code == 200


def test_reset_fills_every_window_again(start_emulator: StartEmulator):
    server = start_emulator(clock=FakeClock(), rate_limit="1/minute")
    with rest(server) as client:
        assert [client.get("/v2/pods").status_code for _ in range(2)] == [200, 429]
        admin(server, "POST", "/reset").raise_for_status()
        assert client.get("/v2/pods").status_code == 200


@pytest.mark.parametrize(
    ("text", "error"),
    [("60", "QUOTA/WINDOW"), ("60/fortnight", "window is"), ("0/minute", "at least 1"), ("1/minute,2/minute", "twice")],
)
def test_bad_policies_are_refused(text: str, error: str):
    with pytest.raises(ValueError, match=error):
        RateLimitPolicy.parse(text)


def test_limiter_windows_open_at_the_first_call_after_the_last_closed():
    limiter = RateLimiter(RateLimitPolicy.parse("2/minute"))
    assert [limiter.admit(t).allowed for t in (100, 101, 102)] == [True, True, False]
    assert limiter.admit(159.5).retry_after == 1  # whole seconds, never 0
    assert limiter.admit(160).allowed  # a new window opens at 160, lasting until 220
    assert limiter.admit(200).allowed and not limiter.admit(219).allowed
    assert RateLimiter(RateLimitPolicy.parse("off")).admit(0) == RateLimiter(RateLimitPolicy()).admit(0)


def test_401_is_not_counted_against_the_quota(start_emulator: StartEmulator):
    server = start_emulator(clock=FakeClock(), rate_limit="1/minute", api_key="right")
    with rest(server, key="wrong") as anonymous:
        assert all(anonymous.get("/v2/pods").status_code == 401 for _ in range(3))
    with rest(server, key="right") as client:
        assert client.get("/v2/pods").status_code == 200
    assert httpx.get(f"{server.url}/v2/pods").status_code == 401
