"""Transcript text rules: WER, the LocalAgreement prefix, and the hallucination and loop filters."""

from hypothesis import given
from hypothesis import strategies as st

from gpu_server.transcript import (
    agreed_prefix,
    has_repeat_loop,
    is_hallucination,
    is_runaway,
    normalize_words,
    word_error_rate,
    word_errors,
)

words = st.lists(st.sampled_from(["the", "cat", "sat", "on", "a", "mat", "dog"]), max_size=20)


def test_normalisation_ignores_case_punctuation_and_british_spelling():
    assert normalize_words("Hello, World! My favourite colour.") == ["hello", "world", "my", "favorite", "color"]


def test_words_of_any_script_are_whole_words():
    """Spanish WER was measured on split words: "mañana" was "ma" and "ana", so one wrong letter cost two."""
    assert normalize_words("¿Qué tiempo hará mañana? Él dijo: «sí».") == ["qué", "tiempo", "hará", "mañana", "él", "dijo", "sí"]
    assert word_errors("hasta mañana", "hasta manana") == (1, 2)
    assert normalize_words("snake_case") == ["snake", "case"]


def test_number_words_and_digits_are_the_same_word():
    assert normalize_words("Two cats, 3 dogs") == ["2", "cats", "3", "dogs"]
    assert word_errors("I have two cats", "I have 2 cats.") == (0, 4)


def test_word_errors_count_substitutions_insertions_deletions():
    assert word_errors("the cat sat", "the cat sat") == (0, 3)
    assert word_errors("the cat sat", "the bat sat down") == (2, 3)
    assert word_errors("the cat sat", "") == (3, 3)
    assert word_error_rate(["a b", "c d"], ["a b", "c x"]) == 0.25


@given(words, words)
def test_wer_is_zero_only_for_identical_word_sequences(ref, hyp):
    errors, n = word_errors(" ".join(ref), " ".join(hyp))
    assert (errors == 0) == (ref == hyp)
    assert errors <= max(n, len(hyp))


def test_agreed_prefix_is_the_shared_leading_words():
    assert agreed_prefix("Could you tell me what", "Could you tell me where the") == "Could you tell me"
    assert agreed_prefix("", "Hello there") == ""
    assert agreed_prefix("hello, there", "Hello there friend") == "Hello there"


@given(words, words)
def test_agreed_prefix_is_a_prefix_of_both(a, b):
    agreed = normalize_words(agreed_prefix(" ".join(a), " ".join(b)))
    assert agreed == a[: len(agreed)] == b[: len(agreed)]


def test_hallucinations_on_silence_are_dropped_but_clear_speech_is_kept():
    assert is_hallucination(" Thank you.", no_speech_prob=0.7, avg_logprob=-0.9)
    assert is_hallucination("Subtitles by the Amara.org community", no_speech_prob=0.0, avg_logprob=-0.1)
    assert is_hallucination(" . . .", no_speech_prob=0.0, avg_logprob=-0.1)
    assert not is_hallucination("Thank you.", no_speech_prob=0.01, avg_logprob=-0.2)
    assert not is_hallucination("Turn off the lights.", no_speech_prob=0.5, avg_logprob=-0.9)


def test_repeat_loops_and_impossible_word_rates_are_runaway():
    looped = "Please remind me to call. Please remind me to call. Please remind me to call."
    assert has_repeat_loop(looped)
    assert is_runaway(looped, audio_s=10)
    assert is_runaway("one two three four five six seven eight nine ten eleven", audio_s=1)
    assert not is_runaway("No, no, no, I said the kitchen.", audio_s=2)
    assert not has_repeat_loop("no no no")
