"""``Pacer``: when each TTS frame of one `/ws/tts` connection may leave, so the listener is never more than
``max_ahead_s`` ahead of real time. Pure: times are passed in.

Why: Piper synthesizes ~15-30x faster than real time, so unpaced, a client holds most of a reply within a
second of its start, and a barge-in silences it only if the client flushes its own buffer. Paced, a naive
client that plays frames as they come holds at most ``max_ahead_s`` (a short initial burst of that size
absorbs network jitter), and a cancel silences it within that.

The model is a listener that starts playing a frame as soon as it arrives, or when the frame before it
ends, whichever is later: the *playout clock*. A frame may be sent ``max_ahead_s`` before its playout time.
If synthesis falls behind, the listener runs dry and the clock restarts from the next frame's arrival; a
cancel (the listener drops what it has) restarts it too. Back-to-back utterances share the clock, so the
second does not arrive while the first is still playing.
"""

from __future__ import annotations


class Pacer:
    def __init__(self, frame_s: float, max_ahead_s: float) -> None:
        if frame_s <= 0 or max_ahead_s < 0:
            raise ValueError("a pacer needs a positive frame length and a non-negative lead")
        self.frame_s = frame_s
        self.max_ahead_s = max_ahead_s
        self._next: float | None = None  # playout time of the next frame sent, while the listener has audio

    def release_at(self, now: float) -> float:
        """The earliest time the next frame may be sent (``now`` or later)."""
        if self._next is None or self._next <= now:
            return now
        return max(now, self._next - self.max_ahead_s)

    def sent(self, now: float) -> None:
        """A frame left at ``now``."""
        start = now if self._next is None or self._next < now else self._next
        self._next = start + self.frame_s

    def buffered(self, now: float) -> float:
        """Seconds of audio the listener holds and has not played yet."""
        return 0.0 if self._next is None else max(0.0, self._next - now)

    def reset(self) -> None:
        """The listener dropped what it held (barge-in)."""
        self._next = None
