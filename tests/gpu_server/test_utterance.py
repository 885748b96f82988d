"""Committed segments of an utterance, and where a long turn is cut."""

import pytest

from gpu_server.transcript import ends_sentence, join_segments
from gpu_server.utterance import Segment, Utterance


def utterance(*parts: tuple[str, int, float]) -> Utterance:
    """Segments of the given text, end sample and pause, one after another from sample 0."""
    utt, start = Utterance(1, 0), 0
    for text, end, pause_ms in parts:
        utt.commit(Segment(text, start, end, pause_ms))
        start = end
    return utt


def test_commits_move_the_tail_and_reset_the_tail_hypotheses():
    utt = Utterance(1, 100, prefix="send a", previous="send a message")
    utt.commit(Segment("Send a message.", 100, 500, 150.0))
    assert utt.committed_end == 500 and utt.prefix == utt.previous == ""
    assert utt.text_with("to my team.") == "Send a message to my team."
    with pytest.raises(ValueError):
        utt.commit(Segment("gap", 600, 700, 0.0))  # must start where the last one ended


def test_a_long_turn_is_cut_at_a_sentence_end_before_a_longer_pause_mid_sentence():
    utt = utterance(
        ("Could you tell me the weather?", 1000, 120.0),
        ("Send a message.", 2000, 400.0),  # long pause, but the next part carries on the sentence
        ("to my team.", 3000, 90.0),
    )
    assert utt.split_point(after=0) == 1
    assert utt.split_point(after=1000) == 3  # a sentence end whose continuation is not known yet
    # As soon as possible: the first sentence end, once what follows it is known.
    assert utt.split_point(after=0, sentence_end=True) == 1
    assert utt.split_point(after=1000, sentence_end=True) is None
    utt.previous = "Thanks."  # the tail after the last segment starts a new sentence
    assert utt.split_point(after=1000, sentence_end=True) == 3
    head = utt.split(1)
    assert [s.text for s in head] == ["Could you tell me the weather?"]
    assert utt.start == 1000 and utt.committed_text == "Send a message to my team."


def test_without_a_sentence_end_the_longest_pause_wins_and_nothing_before_the_lookback_counts():
    utt = utterance(("so I was thinking", 1000, 300.0), ("that we could", 2000, 120.0), ("maybe go", 3000, 200.0))
    assert utt.split_point(after=0) == 1
    assert utt.split_point(after=1000) == 3
    assert utt.split_point(after=3000) is None


def test_joining_drops_a_full_stop_the_next_part_carries_on_from():
    assert join_segments(["Send a message.", "to my team.", "", "Thanks."]) == "Send a message to my team. Thanks."
    assert join_segments(["Wait...", "what?"]) == "Wait... what?"
    assert ends_sentence("Is it?", "Yes.") and not ends_sentence("It is.", "and so")
    assert not ends_sentence("and so", None) and ends_sentence("Done.", None)
