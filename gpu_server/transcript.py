"""Transcript text: normalisation, word error rate, the stable-prefix rule for partials, and the filters
that keep Whisper's hallucinations (text for silence or noise, repeat loops) off the wire.

Pure; used by `stt.SttStream` (filters, stable prefix), the Whisper engine (loop detection) and by the
tests and `bench/speech.py` (WER).
"""

from __future__ import annotations

import re
import zlib

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")  # letters and digits of any script: "mañana" is one word
# British spellings Whisper and our TTS texts disagree on; WER should not count them.
_SPELLING = {"colour": "color", "favourite": "favorite", "travelling": "traveling", "centre": "center"}
# Whisper writes "2" where the text says "two".
_SPELLING |= {word: str(n) for n, word in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}

# What Whisper says when it hears nothing: YouTube outros and subtitle credits from its training data.
# Dropped only when the decoder itself is unsure (see ``is_hallucination``), so a clearly spoken
# "thank you" still comes through.
_HALLUCINATIONS = frozenset(
    {
        "you",
        "thank you",
        "thanks",
        "thank you very much",
        "thanks for watching",
        "thank you for watching",
        "thank you so much for watching",
        "please subscribe",
        "subscribe",
        "bye",
        "bye bye",
        "oh",
        "uh",
        "um",
        "hmm",
        "so",
        "okay",
        "i'm sorry",
        "the end",
    }
)
_CAPTION_CREDITS = re.compile(r"subtitles? by|captions? by|amara\.org|transcribed by|translated by", re.I)


def normalize_words(text: str) -> list[str]:
    words = _WORD.findall(text.lower().replace("\u2019", "'"))
    return [_SPELLING.get(w, w) for w in words]


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edit distance in words, words in the reference) after normalisation."""
    ref, hyp = normalize_words(reference), normalize_words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[len(hyp)], len(ref)


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER: total edits over total reference words."""
    edits = words = 0
    for ref, hyp in zip(references, hypotheses, strict=True):
        e, n = word_errors(ref, hyp)
        edits, words = edits + e, words + n
    return edits / words if words else 0.0


def agreed_prefix(previous: str, current: str) -> str:
    """LocalAgreement-2: the leading words two consecutive hypotheses share, in ``current``'s spelling."""
    prev_words = normalize_words(previous)
    tokens = current.split()
    agreed = 0
    seen = 0
    for n, token in enumerate(tokens, 1):
        norm = normalize_words(token)
        if prev_words[seen : seen + len(norm)] != norm:
            break
        seen += len(norm)
        agreed = n
    return " ".join(tokens[:agreed])


def compression_ratio(text: str) -> float:
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


def has_repeat_loop(text: str, min_repeats: int = 3) -> bool:
    """True when some run of 1-8 words repeats back to back ``min_repeats`` times: Whisper stuck in a loop."""
    words = normalize_words(text)
    for size in range(1, 9):
        for start in range(len(words) - size * min_repeats + 1):
            gram = words[start : start + size]
            if all(words[start + k * size : start + (k + 1) * size] == gram for k in range(1, min_repeats)):
                # Short natural repeats ("no no no") are allowed; a loop of longer phrases is not.
                if size > 1 or min_repeats >= 4 or len(words) > 8:
                    return True
    return False


def is_runaway(text: str, audio_s: float) -> bool:
    """More words than anyone can say in ``audio_s``, a loop, or text that compresses like a loop."""
    words = len(normalize_words(text))
    return words > 6 * audio_s + 4 or has_repeat_loop(text) or compression_ratio(text) > 2.4


def is_hallucination(text: str, no_speech_prob: float, avg_logprob: float) -> bool:
    """Whether a decoded text should be dropped instead of shown to the user."""
    words = normalize_words(text)
    if not words:
        return True  # only punctuation or symbols ("...", "♪")
    if _CAPTION_CREDITS.search(text):
        return True
    unsure = no_speech_prob > 0.2 or avg_logprob < -0.6
    return unsure and " ".join(words) in _HALLUCINATIONS


_SENTENCE_END = (".", "?", "!", "\u2026")


def join_segments(texts: list[str]) -> str:
    """The texts of consecutive stretches of one utterance as one text.

    Each stretch was decoded up to a pause, so Whisper tends to end it with a full stop even mid-sentence;
    when the next stretch goes on in lower case, that full stop was a breath, not a sentence end.
    """
    out = ""
    for text in texts:
        text = text.strip()
        if not text:
            continue
        if out.endswith(".") and not out.endswith("..") and text[0].islower():
            out = out[:-1]
        out = f"{out} {text}" if out else text
    return out


def ends_sentence(text: str, following: str | None) -> bool:
    """Whether a stretch ends a sentence: it ends with sentence punctuation and what follows (if known)
    does not carry on in lower case."""
    text = text.strip()
    if not text.endswith(_SENTENCE_END):
        return False
    following = (following or "").strip()
    return not (following and following[0].islower())
