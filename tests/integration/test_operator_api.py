"""The admin API as an operator meets it with curl and a browser: /docs that works offline and can authorize,
HEAD on the probes, policy changes refused when they cannot be right, admin verbs that are consistent."""

import pytest

from .harness import ADMIN, until
from .test_controller_lifecycle import standby_parked


async def test_docs_work_offline_and_can_send_the_token(stack):
    server, api, emu = stack
    page = await api.http.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower() and "/docs/static/swagger-ui-bundle.js" in page.text
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
        got = await api.http.get(f"/docs/static/{asset}")
        assert got.status_code == 200 and len(got.content) > 50_000, asset
    assert "/docs/static/redoc.standalone.js" in (await api.http.get("/redoc")).text
    spec = (await api.http.get("/openapi.json")).json()
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": spec["components"]["securitySchemes"]["bearer"]["description"]}
    assert spec["paths"]["/v1/leases"]["post"]["security"] == [{"bearer": []}]
    assert "security" not in spec["paths"]["/healthz"]["get"]


async def test_head_on_the_probes(stack):
    server, api, emu = stack
    assert (await api.http.head("/healthz")).status_code == 200
    await until(lambda: _ready(api))
    assert (await api.http.head("/readyz")).status_code == 200


async def _ready(api):
    return (await api.http.get("/readyz")).status_code == 200


@pytest.mark.parametrize(
    ("patch", "says"),
    [
        ({"gpu_types": ["NVIDIA Fake 9000"]}, "RunPod does not offer 'NVIDIA Fake 9000'"),
        ({"standby_count": 11}, "standby_count 11 is above max_pods 10"),
        ({"max_pods": 0}, "standby_count 1 is above max_pods 0"),
        ({"paused": "yes"}, "paused: Input should be a valid boolean"),
        ({"standby_count": "2"}, "standby_count: Input should be a valid integer"),
    ],
)
async def test_policy_changes_that_cannot_be_right_are_refused(stack, patch, says):
    server, api, emu = stack
    before = (await api.get("/v1/policy", ADMIN)).json()
    response = await api.http.patch("/v1/policy", json=patch, headers=api.h(ADMIN))
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_policy"
    assert says in response.json()["error"]["message"]
    assert (await api.get("/v1/policy", ADMIN)).json() == before


async def test_a_real_gpu_type_and_integers_for_floats_are_accepted(stack):
    server, api, emu = stack
    ok = await api.http.patch("/v1/policy", json={"gpu_types": ["NVIDIA A40"], "idle_ttl_s": 120},
                              headers=api.h(ADMIN))
    assert ok.status_code == 200 and ok.json()["gpu_types"] == ["NVIDIA A40"] and ok.json()["idle_ttl_s"] == 120.0


async def test_admin_verbs_repeat_as_no_ops_and_refuse_nonsense(stack):
    server, api, emu = stack
    sb = await until(lambda: standby_parked(api))
    pid = sb["id"]
    again = await api.post(f"/v1/pods/{pid}/stop", ADMIN)  # already stopped
    assert again.status_code == 200 and again.json()["state"] == "stopped"
    assert (await api.post(f"/v1/pods/{pid}/cordon", ADMIN)).json()["cordoned"] is True
    assert (await api.post(f"/v1/pods/{pid}/cordon", ADMIN)).status_code == 200  # a repeat
    first = await api.post(f"/v1/pods/{pid}/terminate", ADMIN)
    assert first.status_code == 200
    repeat = await api.post(f"/v1/pods/{pid}/terminate", ADMIN)
    assert repeat.status_code == 200 and repeat.json()["state"] in ("terminating", "terminated")

    async def gone():
        return (await api.get(f"/v1/pods/{pid}", ADMIN)).json()["state"] == "terminated"

    await until(gone)
    assert (await api.post(f"/v1/pods/{pid}/terminate", ADMIN)).status_code == 200
    for verb in ("cordon", "uncordon", "start", "stop"):
        refused = await api.post(f"/v1/pods/{pid}/{verb}", ADMIN)
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "conflict", verb
        assert "terminated" in refused.json()["error"]["message"]
    events = (await api.get("/v1/events", ADMIN, object=pid)).json()["events"]
    assert [e["reason"] for e in events].count("AdminTerminate") == 1  # repeats change nothing, log nothing
