"""The reply is cut so the first piece is short and nothing is lost or reordered."""

from hypothesis import given
from hypothesis import strategies as st

from gpu_server.sentences import (
    FIRST_PIECE_MAX_WORDS,
    MAX_PIECE_CHARS,
    NEXT_PIECE_MAX_WORDS,
    lead_phrase,
    split_for_speech,
)


def test_first_clause_goes_first_then_whole_sentences():
    assert split_for_speech("Sure, I can help you with that right away. What else?") == [
        "Sure,",
        "I can help you with that right away.",
        "What else?",
    ]


def test_long_first_sentence_without_commas_breaks_at_a_phrase_boundary():
    pieces = split_for_speech("I can help you with that right away because it is easy.")
    assert pieces == ["I can help you", "with that right away because it is easy."]


def test_short_text_stays_whole():
    assert split_for_speech("Hello there.") == ["Hello there."]
    assert split_for_speech("   ") == []


vocabulary = ["well,", "the", "cat", "sat", "and", "ran", "with", "joy."]
sentence = st.lists(st.sampled_from(vocabulary), min_size=1, max_size=80)


@given(st.lists(sentence, max_size=6))
def test_pieces_keep_every_word_in_order_and_stay_bounded(sentences):
    text = " ".join(" ".join(s) for s in sentences)
    pieces = split_for_speech(text)
    assert " ".join(pieces).split() == text.split()
    assert all(len(p) <= MAX_PIECE_CHARS for p in pieces if " " in p)
    first = pieces[0] if pieces else ""
    if len(first.split()) > FIRST_PIECE_MAX_WORDS + 2:
        # A long first piece is a whole sentence or clause (or a hard-wrapped run-on), never a cut mid-phrase.
        assert first.endswith((".", ",")) or len(pieces) == 1 or len(first) > MAX_PIECE_CHARS - 20


def test_under_load_the_next_piece_is_cut_at_a_phrase_boundary_too():
    assert lead_phrase("I can help you with that right away.") == ["I can help you", "with that right away."]
    assert lead_phrase("this afternoon, so take an umbrella with you.") == ["this afternoon,", "so take an umbrella with you."]
    assert lead_phrase("and eggs to your shopping list.") == ["and eggs to your shopping list."]  # short already
    assert lead_phrase("Supercalifragilistic expialidocious words keep going nowhere fast today.") == [
        "Supercalifragilistic expialidocious words keep going nowhere fast today."  # no place to breathe
    ]


@given(sentence)
def test_a_lead_phrase_keeps_every_word_in_order(words):
    text = " ".join(words)
    pieces = lead_phrase(text)
    assert " ".join(pieces).split() == text.split() and 1 <= len(pieces) <= 2
    assert len(pieces) == 1 or len(pieces[0].split()) <= NEXT_PIECE_MAX_WORDS + 2
