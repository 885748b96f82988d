"""Cutting a reply into the pieces `tts.TtsSession` synthesizes one after another.

The first audio can leave only once its piece is synthesized, and Piper's time grows with the audio
(~25-45 ms per second of speech on two cores, plus a fixed cost), so the first piece is kept to a few
words: the first clause of the first sentence when it is short ("Sure," / "Okay,"), else a break at a
phrase boundary three or four words in: before a preposition, conjunction, auxiliary or determiner
("The kitchen lights | are now turned off."), which is where a speaker could breathe. The rest goes
sentence by sentence, which keeps prosody natural; very long sentences are cut at clause punctuation so
no single piece runs for long. Pure.
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
MAX_PIECE_CHARS = 300


def split_for_speech(text: str, *, short_first: bool = True) -> list[str]:
    """Sentences (long ones cut at clauses); with ``short_first`` the first piece is a few words (Piper)."""
    text = " ".join(text.split("\x00")).strip()
    sentences = [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]
    pieces: list[str] = []
    for sentence in sentences:
        pieces.extend(_bounded(sentence))
    if pieces and short_first:
        pieces[:1] = _first_piece(pieces[0])
    return pieces


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


def _first_piece(sentence: str) -> list[str]:
    words = sentence.split()
    if len(words) <= FIRST_PIECE_MAX_WORDS + 1:
        return [sentence]
    clauses = _CLAUSE_END.split(sentence, maxsplit=1)
    clause_words = len(clauses[0].split()) if len(clauses) == 2 else len(words)
    if clause_words <= FIRST_PIECE_MAX_WORDS:
        return clauses
    for i in (3, 4, 2):  # three or four words read best; two is still better than a long wait
        if i <= len(words) - 3 and words[i].lower().strip("\"'(") in _BREAK_BEFORE:
            return [" ".join(words[:i]), " ".join(words[i:])]
    if clause_words <= FIRST_PIECE_MAX_WORDS + 2:
        return clauses
    return [sentence]
