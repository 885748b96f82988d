"""The TTS pacer: a short burst, then real time; never more than its lead ahead of the listener."""

import itertools

from hypothesis import given
from hypothesis import strategies as st

from gpu_server.pacing import Pacer

FRAME = 0.02


def run(pacer: Pacer, frames: int, ready_at: list[float] | None = None) -> list[float]:
    """Send times of ``frames`` frames, each sent as early as the pacer allows (and once it is ready)."""
    now, sent = 0.0, []
    for k in range(frames):
        now = max(now, ready_at[k] if ready_at else 0.0)
        now = pacer.release_at(now)
        pacer.sent(now)
        sent.append(now)
    return sent


def test_a_burst_of_the_lead_then_one_frame_per_frame_time():
    sent = run(Pacer(FRAME, 0.3), 100)
    assert sent[:16] == [0.0] * 16  # 300 ms of lead on top of the frame that plays now
    steps = [round(b - a, 9) for a, b in itertools.pairwise(sent[16:])]
    assert set(steps) == {FRAME}
    assert abs(sent[-1] - (100 * FRAME - 0.3 - FRAME)) < 1e-9


@given(st.floats(0.0, 2.0), st.lists(st.floats(0.0, 0.5), min_size=1, max_size=200))
def test_the_listener_never_holds_more_than_the_lead(lead, delays):
    """Whatever synthesis delays come, a listener that plays frames as they come never holds more than one
    frame plus the lead."""
    pacer = Pacer(FRAME, lead)
    ready, t = [], 0.0
    for d in delays:
        t += d * (d > 0.3)  # mostly ready at once, sometimes late
        ready.append(t)
    playing_until = None
    for sent in run(pacer, len(delays), ready):
        playing_until = sent + FRAME if playing_until is None or playing_until < sent else playing_until + FRAME
        assert playing_until - sent <= lead + FRAME + 1e-9


def test_an_underrun_restarts_the_clock_and_reset_drops_what_the_listener_held():
    pacer = Pacer(FRAME, 0.1)
    run(pacer, 10)
    assert abs(pacer.buffered(0.08) - (0.2 - 0.08)) < 1e-9
    assert pacer.release_at(5.0) == 5.0 and pacer.buffered(5.0) == 0.0  # the listener ran dry long ago
    pacer.sent(5.0)
    assert abs(pacer.buffered(5.0) - FRAME) < 1e-9
    pacer.reset()
    assert pacer.buffered(5.0) == 0.0 and pacer.release_at(5.0) == 5.0
