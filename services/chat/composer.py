"""Writing an answer from retrieved chunks.

`AnswerComposer` is what the Ask use case needs from whatever writes answers: given the
question and the chunks found for it (all from spaces the asker can read), stream text
fragments and the citations the text refers to, or nothing at all when no chunk is relevant
(the use case then answers "nothing found"; a composer never makes an answer up).

`ExtractiveComposer` is the default and involves no language model: it quotes the sentences of
the chunks that best match the question. A sentence's score is the share of the question's
terms it contains plus half the chunk's search score (the vector service's cosine similarity),
so a sentence must share at least one term with the question to be chosen, and among similar
sentences the one from the closer chunk wins. The best sentences are quoted most relevant
first, without repeats, up to about 600 characters; each quote ends with the number of the
citation of its chunk, and a citation is sent just before the first quote that refers to it:

    From your documents:
    > Refunds are issued within 14 days of the request. [1]
    > A refund needs the order number. [2]
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from services.chat.domain import SNIPPET_MAX, AnswerDelta, AnswerKind, AnswerPart, Citation, RetrievedChunk


class AnswerComposer(Protocol):
    """Writes answers from chunks; see the module docstring for the obligations."""

    @property
    def answer_kind(self) -> AnswerKind:
        """The kind of the answers it writes (EXTRACTIVE or GENERATIVE)."""
        ...

    def compose(self, question: str, chunks: Sequence[RetrievedChunk]) -> AsyncIterator[AnswerPart]:
        """Stream the answer: text fragments and citations (numbered by the order they are
        yielded, from 1). Yield nothing when no chunk is relevant to the question."""
        ...


ANSWER_HEADING = "From your documents:"
MAX_QUOTED_CHARS = 600
MAX_QUOTES = 6
# A sentence scoring below this share of the best sentence's score is not "most relevant".
RELATIVE_SCORE_FLOOR = 0.5
CHUNK_SCORE_WEIGHT = 0.5
MIN_SENTENCE_WORDS = 3
# Two sentences sharing this share of their terms say the same thing (overlapping chunks,
# versions of one document): only the better one is quoted.
DUPLICATE_TERM_OVERLAP = 0.8
ELLIPSIS = "…"

WORD = re.compile(r"\w+")
SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")
LIST_OR_HEADING_MARK = re.compile(r"^(?:[#>*•-]+\s+)+")
TERMINAL_PUNCTUATION = (".", "!", "?", "…", '"', "”", "'", ")")

# Words that say nothing about a topic: they never make a sentence relevant, so a question made
# only of them ("what is it?") finds nothing rather than any sentence with an "is".
STOPWORD_LIST = """
    a about above after again all also am an and any are as at be been before being below between both but by
    can could did do does doing down during each few for from further had has have having he her here hers him his
    how i if in into is it its itself just me more most my no nor not now of off on once only or other our ours out
    over own same she should so some such than that the their theirs them then there these they this those through
    to too under until up very was we were what when where which while who whom why will with would you your yours
    please tell explain show give find know"""
STOPWORDS = frozenset(STOPWORD_LIST.split())


SUFFIXES = (
    ("ies", "y"),  # policies → policy
    ("sses", "ss"),  # processes → process
    ("xes", "x"),  # indexes → index
    ("ches", "ch"),  # matches → match
    ("shes", "sh"),  # pushes → push
    ("ing", ""),  # indexing → index
    ("ed", ""),  # refunded → refund
    ("s", ""),  # refunds → refund
)


def stem(word: str) -> str:
    """A crude English stem, so "refunds", "refunded" and "refund" match, as do "issue" and
    "issued". Deterministic and only ever applied to both sides of a comparison."""
    for suffix, replacement in SUFFIXES:
        if word.endswith(suffix) and not word.endswith(("ss", "us", "is")) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)] + replacement
            break
    # A final silent e: "issue" and "issu(ed)" are one term.
    return word[:-1] if len(word) > 4 and word.endswith("e") else word


def terms(text: str, *, keep_stopwords: bool = False) -> set[str]:
    words = WORD.findall(text.casefold())
    return {stem(word) for word in words if len(word) > 1 and (keep_stopwords or word not in STOPWORDS)}


def sentences_of(text: str) -> list[str]:
    """The chunk's sentences (and lines, so headings and list items stand alone), without list
    or heading marks. A chunk cut at the snippet limit loses its unfinished last sentence."""
    sentences = []
    for line in text.splitlines():
        for part in SENTENCE_END.split(line):
            sentence = LIST_OR_HEADING_MARK.sub("", part.strip()).strip()
            if sentence:
                sentences.append(sentence)
    if sentences and len(text) >= SNIPPET_MAX and not sentences[-1].endswith(TERMINAL_PUNCTUATION):
        sentences.pop()
    return sentences


@dataclass(frozen=True)
class Passage:
    """A sentence chosen for the answer and the chunk it is quoted from."""

    sentence: str
    chunk: RetrievedChunk
    score: float


@dataclass(frozen=True)
class _Candidate:
    passage: Passage
    terms: frozenset[str]
    chunk_rank: int
    position: int


def candidates(question: str, chunks: Sequence[RetrievedChunk]) -> list[_Candidate]:
    """Every sentence sharing a term with the question, best first (ties: the better-ranked
    chunk, then the earlier sentence)."""
    wanted = terms(question)
    if not wanted:
        return []
    found = []
    for rank, chunk in enumerate(chunks):
        for position, sentence in enumerate(sentences_of(chunk.text)):
            if len(WORD.findall(sentence)) < MIN_SENTENCE_WORDS:
                continue
            sentence_terms = frozenset(terms(sentence, keep_stopwords=True))
            shared = len(wanted & sentence_terms)
            if shared == 0:
                continue
            score = shared / len(wanted) + CHUNK_SCORE_WEIGHT * max(0.0, chunk.score)
            found.append(_Candidate(Passage(sentence, chunk, score), sentence_terms, rank, position))
    found.sort(key=lambda c: (-c.passage.score, c.chunk_rank, c.position))
    return found


def is_repeat(candidate: _Candidate, chosen: Sequence[_Candidate]) -> bool:
    for earlier in chosen:
        if candidate.passage.sentence.casefold() == earlier.passage.sentence.casefold():
            return True
        union = candidate.terms | earlier.terms
        if union and len(candidate.terms & earlier.terms) / len(union) >= DUPLICATE_TERM_OVERLAP:
            return True
    return False


def shortened(sentence: str, limit: int) -> str:
    """The sentence cut at a word boundary to at most `limit` characters, ellipsis included."""
    if len(sentence) <= limit:
        return sentence
    cut = sentence[: limit - len(ELLIPSIS)]
    if " " in cut:
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip() + ELLIPSIS


def select_passages(
    question: str, chunks: Sequence[RetrievedChunk], max_chars: int = MAX_QUOTED_CHARS
) -> list[Passage]:
    """The sentences to quote, most relevant first; empty when nothing is relevant."""
    ranked = candidates(question, chunks)
    if not ranked:
        return []
    floor = ranked[0].passage.score * RELATIVE_SCORE_FLOOR
    chosen: list[_Candidate] = []
    used = 0
    for candidate in ranked:
        if len(chosen) == MAX_QUOTES or candidate.passage.score < floor:
            break
        if is_repeat(candidate, chosen):
            continue
        length = len(candidate.passage.sentence)
        if chosen and used + length > max_chars:
            continue  # a shorter, less relevant sentence may still fit
        chosen.append(candidate)
        used += length
    first = chosen[0].passage
    # The best sentence is always quoted, shortened when it alone is over the limit.
    passages = [Passage(shortened(first.sentence, max_chars), first.chunk, first.score)]
    return passages + [candidate.passage for candidate in chosen[1:]]


def citation_of(chunk: RetrievedChunk) -> Citation:
    return Citation(
        document_id=chunk.document_id,
        space_id=chunk.space_id,
        chunk_index=chunk.chunk_index,
        document_version=chunk.document_version,
        snippet=chunk.text,
        score=chunk.score,
    )


def chunk_key(chunk: RetrievedChunk) -> tuple[str, int, int]:
    return chunk.document_id, chunk.document_version, chunk.chunk_index


def extractive_answer(passages: Sequence[Passage]) -> list[AnswerPart]:
    """The answer's parts: the heading, then each quote preceded by its chunk's citation the
    first time that chunk is quoted."""
    if not passages:
        return []
    parts: list[AnswerPart] = [AnswerDelta(ANSWER_HEADING)]
    numbers: dict[tuple[str, int, int], int] = {}
    for passage in passages:
        key = chunk_key(passage.chunk)
        if key not in numbers:
            numbers[key] = len(numbers) + 1
            parts.append(citation_of(passage.chunk))
        parts.append(AnswerDelta(f"\n> {passage.sentence} [{numbers[key]}]"))
    return parts


class ExtractiveComposer:
    """Answers by quoting the chunks' most relevant sentences (no language model)."""

    answer_kind = AnswerKind.EXTRACTIVE

    def __init__(self, max_chars: int = MAX_QUOTED_CHARS) -> None:
        self.max_chars = max_chars

    async def compose(self, question: str, chunks: Sequence[RetrievedChunk]) -> AsyncIterator[AnswerPart]:
        for part in extractive_answer(select_passages(question, chunks, self.max_chars)):
            yield part
