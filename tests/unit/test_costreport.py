"""The cost report's text and projection from a /v1/cost answer (estimated only, and with billed figures)."""

from datetime import UTC, datetime

from reconciler.costreport import projection, render

NOW = datetime(2026, 1, 20, 12, 0, tzinfo=UTC).timestamp()
ESTIMATED = {
    "usd_per_hour": {"gpu": 0.69, "storage": 0.0274, "total": 0.7174},
    "spent_usd": {"gpu": 12.5, "storage": 0.75, "total": 13.25},
    "by_pod": {"aaa": {"gpu": 10.0, "storage": 0.5}, "bbb": {"gpu": 2.5, "storage": 0.25}},
}
PODS = [{"id": "aaa", "gpu_type": "NVIDIA GeForce RTX 4090", "state": "ready"},
        {"id": "bbb", "gpu_type": "NVIDIA L4", "state": "stopped"}]


def test_an_estimate_only_report() -> None:
    text = render("http://c:8080", ESTIMATED, PODS, NOW)
    assert "billed: not reported" in text
    assert "today (USD): not reported by this controller" in text
    assert "month to date (USD): not reported by this controller" in text
    since = text.split("since the database started (USD)")[1].splitlines()
    assert since[3].split() == ["total", "13.2500", "-"]
    assert "516.53" in text  # 0.7174 $/h x 720 h
    rows = text.split("by pod")[1].splitlines()[1:]
    assert rows[0].split()[0] == "aaa" and "ready" in rows[0] and rows[1].split()[0] == "bbb"


def test_billed_figures_and_periods_are_shown_beside_the_estimate() -> None:
    body = {
        **ESTIMATED,
        "billed_usd": {"gpu": 12.1, "storage": 0.7, "total": 12.8, "as_of": "2026-01-20T11:55:00Z"},
        "today": {"gpu": 1.0, "storage": 0.1, "total": 1.1, "billed": {"gpu": 0.9, "storage": 0.1, "total": 1.0}},
        "month_to_date": {"gpu": 12.5, "storage": 0.75, "total": 13.25},
        "by_pod": {"aaa": {"gpu": 10.0, "storage": 0.5, "billed": {"gpu": 9.8, "storage": 0.45}}},
    }
    text = render("http://c:8080", body, PODS, NOW)
    assert "RunPod's billing records as of 2026-01-20T11:55:00Z" in text
    today = text.split("today (USD)")[1].splitlines()
    assert today[1].split() == ["gpu", "1.0000", "0.9000"]
    since = text.split("since the database started (USD)")[1].splitlines()
    assert since[1].split() == ["gpu", "12.5000", "12.1000"]
    assert "9.8000" in text.split("by pod")[1]
    proj = projection(body, NOW)
    # 13.25 so far + 0.7174 $/h for the 11.5 days left of January
    assert proj["calendar_month_end_usd"] == round(13.25 + 0.7174 * 11.5 * 24, 2)
    assert "this month, at its end" in text
