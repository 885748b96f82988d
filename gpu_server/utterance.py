"""One utterance of `stt.SttStream`: its committed segments and its undecided tail, on the 16 kHz stream
clock. Pure: no audio, no model, no clock.

An utterance runs from a VAD onset to its endpoint (or to ``stop``), or, in a turn longer than
``max_utterance_s``, from one split to the next.

Why segments: decoding a whole utterance at its endpoint costs time that grows with its length (a 10 s
utterance took over half a second after the endpoint on two cores, a 20 s one over two). So while the user
speaks, the audio up to each pause is decoded with the final's beam (`stt` decides when), and once speech
resumes after that pause, that text is *committed*: it becomes the final's text for that stretch and its
audio is no longer needed. At the endpoint only the tail after the last commit is left to decode, however
long the utterance was.

Splits: a turn longer than ``max_utterance_s`` is sent in parts, each a final that is not the end of the
turn, cut at a committed pause of its last seconds: the first sentence end there (known by what follows
it), else, when the part reaches ``max_utterance_s``, the longest pause. The committed text after the cut
and the tail carry on into the next part, so partials keep flowing across the split and nothing is
decoded twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gpu_server.transcript import ends_sentence, join_segments


@dataclass(frozen=True, slots=True)
class Segment:
    text: str  # "" when the stretch held no words (a cough, a breath)
    start: int  # first sample of its audio
    end: int  # the cut: a sample inside the pause that ended it
    pause_ms: float  # silence from its last speech to the next speech: how clearly a phrase ended there


@dataclass
class Utterance:
    number: int
    start: int  # sample where its audio starts (a pre-roll before the onset, or a split's cut)
    segments: list[Segment] = field(default_factory=list)
    # Partials, over the tail only: the speech end the latest one covers, the words two consecutive tail
    # hypotheses agree on (LocalAgreement-2, forced as the next one's prefix), and the latest hypothesis.
    partial_end: int = 0
    prefix: str = ""
    previous: str = ""
    partials_sent: int = 0

    @property
    def committed_end(self) -> int:
        """Where the undecided tail starts."""
        return self.segments[-1].end if self.segments else self.start

    @property
    def committed_text(self) -> str:
        return join_segments([s.text for s in self.segments])

    def text_with(self, tail: str) -> str:
        """The utterance's text: the committed segments, then ``tail`` (a decode of the audio after them)."""
        return join_segments([*(s.text for s in self.segments), tail])

    def commit(self, segment: Segment) -> None:
        if segment.start != self.committed_end or segment.end <= segment.start:
            raise ValueError(f"segment {segment.start}-{segment.end} does not follow {self.committed_end}")
        self.segments.append(segment)
        # The tail now starts after this segment: hypotheses about the old tail no longer line up with it.
        self.prefix = self.previous = ""

    def split_point(self, after: int, *, sentence_end: bool = False) -> int | None:
        """How many segments the first part keeps when the utterance is cut at a committed pause ending
        after sample ``after``: the best one (a sentence end first, then the longest pause), or with
        ``sentence_end`` the first that ends a sentence by what is known to follow it. None if none does."""
        best: tuple[bool, float, int] | None = None
        keep = None
        for i, segment in enumerate(self.segments):
            if segment.end <= after:
                continue
            # What follows: the next segment, else the latest hypothesis about the tail.
            following = self.segments[i + 1].text if i + 1 < len(self.segments) else self.previous
            ends = ends_sentence(segment.text, following or None)
            if sentence_end:
                if ends and following:
                    return i + 1
                continue
            score = (ends, segment.pause_ms, segment.end)  # then the later cut: the shorter remainder
            if best is None or score > best:
                best, keep = score, i + 1
        return keep

    def split(self, keep: int) -> list[Segment]:
        """Cut after the first ``keep`` segments: returns them and goes on as the rest of the turn."""
        if not 0 < keep <= len(self.segments):
            raise ValueError(f"cannot keep {keep} of {len(self.segments)} segments")
        head, self.segments = self.segments[:keep], self.segments[keep:]
        self.start = head[-1].end
        return head
