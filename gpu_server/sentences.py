"""Cutting a reply into the pieces `tts.TtsSession` synthesizes one after another.

The first audio can leave only once its piece is synthesized, and synthesis time grows with the piece,
so the first piece is kept short: the first clause of the first sentence ("Sure," / "Well, ..."), or, for
a long first sentence without commas, its first few words up to a natural phrase break (before "and",
"because", "with", ...). The rest goes sentence by sentence, which keeps prosody natural; very long
sentences are cut at clause punctuation so no single piece runs for long. Pure.
"""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"')\]]*\s+|\n+")
_CLAUSE_END = re.compile(r"(?<=[,;:—–])\s+")
# Words a phrase naturally starts with: breaking just before one sounds like a breath, not a cut.
_PHRASE_STARTS = frozenset(
    "and but or so because since when while if which who where with without for from in on at "
    "about after before into over under through".split()
)
FIRST_PIECE_MAX_WORDS = 6
MAX_PIECE_CHARS = 300


def split_for_speech(text: str) -> list[str]:
    text = " ".join(text.split("\x00")).strip()
    sentences = [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]
    pieces: list[str] = []
    for sentence in sentences:
        pieces.extend(_bounded(sentence))
    if pieces:
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
    if len(words) <= FIRST_PIECE_MAX_WORDS + 2:
        return [sentence]
    clauses = _CLAUSE_END.split(sentence, maxsplit=1)
    if len(clauses) == 2 and len(clauses[0].split()) <= FIRST_PIECE_MAX_WORDS * 2:
        return clauses
    for i in range(FIRST_PIECE_MAX_WORDS, 2, -1):
        if words[i].lower().strip("\"'(") in _PHRASE_STARTS and len(words) - i >= 3:
            return [" ".join(words[:i]), " ".join(words[i:])]
    return [sentence]
