"""Cutting a reply into the pieces `tts.TtsSession` synthesizes one after another.

The first audio can leave only once its piece is synthesized, and Piper's time grows with the audio
(~25-45 ms per second of speech on two cores, plus a fixed cost), so the first piece is kept to a few
words: the first clause of the first sentence when it is short ("Sure," / "Okay,"), else a break at a
phrase boundary three or four words in: before a preposition, conjunction, auxiliary or determiner
("The kitchen lights | are now turned off."), which is where a speaker could breathe. The rest goes
sentence by sentence, which keeps prosody natural; very long sentences are cut at clause punctuation so
no single piece runs for long.

Under load (`tts.TtsSession` asks when the model has others waiting), the piece after the first can be cut
the same way a few more words in (`lead_phrase`): a listener whose first piece lasts half a second needs its
next audio within that half second, and a whole sentence takes longer than that to synthesize while other
replies share the cores. Pure.
"""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"')\]]*\s+|\n+")
_CLAUSE_END = re.compile("(?<=[,;:\u2014\u2013])\\s+")  # also em and en dashes
# Words a phrase starts with: breaking just before one sounds like a breath, not a cut.
_BREAK_BEFORE = frozenset(
    """and but or so because since when while if which who where with without for from in on at about
    after before into over under through of to is are was were be been will would can could should may
    might must do does did has have had a an the this these those my your our their his her its some""".split()
)
FIRST_PIECE_MAX_WORDS = 4
NEXT_PIECE_MAX_WORDS = 6  # a piece cut by `lead_phrase` under load
MAX_PIECE_CHARS = 300


def split_for_speech(text: str, *, short_first: bool = True) -> list[str]:
    """Sentences (long ones cut at clauses); with ``short_first`` the first piece is a few words (Piper)."""
    text = " ".join(text.split("\x00")).strip()
    sentences = [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]
    pieces: list[str] = []
    for sentence in sentences:
        pieces.extend(_bounded(sentence))
    if pieces and short_first:
        pieces[:1] = _lead(pieces[0], FIRST_PIECE_MAX_WORDS, (3, 4, 2))
    return pieces


def lead_phrase(piece: str) -> list[str]:
    """``piece`` as (its first phrase of up to NEXT_PIECE_MAX_WORDS words, the rest), cut where a speaker
    could breathe, or ``[piece]`` when there is no such place or it is short already."""
    return _lead(piece, NEXT_PIECE_MAX_WORDS, (4, 5, 3, 6))


def _bounded(sentence: str) -> list[str]:
    if len(sentence) <= MAX_PIECE_CHARS:
        return [sentence]
    out: list[str] = []
    for clause in _CLAUSE_END.split(sentence):
        if out and len(out[-1]) + len(clause) + 1 <= MAX_PIECE_CHARS:
            out[-1] = f"{out[-1]} {clause}"
        else:
            out.extend(_hard_wrap(clause))
    return out


def _hard_wrap(clause: str) -> list[str]:
    words, out, line = clause.split(), [], ""
    for word in words:
        if line and len(line) + len(word) + 1 > MAX_PIECE_CHARS:
            out.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*out, line] if line else out


def _lead(sentence: str, max_words: int, breaks: tuple[int, ...]) -> list[str]:
    """The sentence's first clause if it has at most ``max_words``, else a cut before a phrase-starting
    word at one of the ``breaks`` (word counts, best first), else a clause a little longer, else whole."""
    words = sentence.split()
    if len(words) <= max_words + 1:
        return [sentence]
    clauses = _CLAUSE_END.split(sentence, maxsplit=1)
    clause_words = len(clauses[0].split()) if len(clauses) == 2 else len(words)
    if clause_words <= max_words:
        return clauses
    for i in breaks:  # for a first piece: three or four words read best; two beats a long wait
        if i <= len(words) - 3 and words[i].lower().strip("\"'(") in _BREAK_BEFORE:
            return [" ".join(words[:i]), " ".join(words[i:])]
    if clause_words <= max_words + 2:
        return clauses
    return [sentence]
