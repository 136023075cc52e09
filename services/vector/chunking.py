"""Splitting a document's content into chunks for embedding, and the snippet shown for a search hit.

Pure functions, no I/O. A document's content (the knowledge service allows up to 256 KiB of UTF-8)
becomes a list of :class:`Chunk`: each one is an exact slice ``content[start:end]`` of at most
``target_chars`` characters that starts at the beginning of a word and ends at the end of one.
Where a chunk ends is chosen by preference: a paragraph break, else a sentence (or line) end, else
the last word that fits, so a chunk holds whole thoughts wherever the text allows it. Consecutive
chunks overlap by up to ``overlap_chars`` characters (the next chunk restarts at a sentence or word
inside the end of the previous one), so a passage cut by a chunk boundary is still whole in one of
them. A "word" longer than a whole chunk (a URL, a base64 blob, a run of symbols) is the only thing
ever cut, at ``target_chars``, since no word boundary exists to honour.

The same input and configuration always give the same chunks: the splitting uses only the text.
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_TARGET_CHARS = 800
DEFAULT_OVERLAP_CHARS = 100
SNIPPET_MAX_CHARS = 240
ELLIPSIS = "…"

# A blank line (possibly holding spaces) separates paragraphs; the break is where the first newline is.
_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n")
# A sentence ends after terminal punctuation (and any closing quotes or brackets) that is followed by
# whitespace or the end of the text. CJK full stops end a sentence without a following space.
_SENTENCE_END = re.compile(r"[.!?…][\"'”’»)\]]*(?=\s|$)|[。！？]")
# A single newline ends a "sentence" only where the next line starts a list item, heading, quote or
# table row: elsewhere it is just hard-wrapped prose (as in most Markdown), not a boundary.
_LINE_BREAK = re.compile(r"\n(?=[^\S\n]*(?:[-*+•>|]|#+|\d+[.)])\s)")
_WORD = re.compile(r"\S+")
_TERM = re.compile(r"\w+")

# Words that say nothing about what a query is looking for; a snippet centred on them would be noise.
_STOPWORD_TEXT = (
    "a an and are as at be but by can do does for from how i if in into is it its me my no not of on or our "
    "so that the their them then there these they this to was we were what when where which who why will "
    "with you your"
)
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk of a document: its position, where it sits in the content, and its text."""

    index: int
    """0-based position of the chunk within the document."""
    start: int
    """Offset of the chunk's first character in the content (in code points, like Python's ``str``)."""
    end: int
    """Offset just past the chunk's last character; ``content[start:end] == text``."""
    text: str


@dataclass(frozen=True, slots=True)
class ChunkingConfig:
    """How big chunks are and how much consecutive chunks share."""

    target_chars: int = DEFAULT_TARGET_CHARS
    """The most characters a chunk holds."""
    overlap_chars: int = DEFAULT_OVERLAP_CHARS
    """Up to this many characters at the end of a chunk are repeated at the start of the next one."""

    def __post_init__(self) -> None:
        if self.target_chars < 20:
            raise ValueError(f"target_chars must be at least 20, got {self.target_chars}")
        # Overlap must leave each chunk room to move forward by at least half its size; otherwise
        # a document would be embedded about twice over for little gain.
        if not 0 <= self.overlap_chars <= self.target_chars // 2:
            raise ValueError(
                f"overlap_chars must be between 0 and target_chars // 2 ({self.target_chars // 2}),"
                f" got {self.overlap_chars}"
            )


class _Boundaries:
    """Sorted candidate chunk ends and starts of one text, found once so each chunk costs a few bisects."""

    def __init__(self, text: str) -> None:
        self.paragraph_ends = _trimmed_ends(text, (m.start() for m in _PARAGRAPH_BREAK.finditer(text)))
        sentence_ends = {m.end() for m in _SENTENCE_END.finditer(text)}
        sentence_ends.update(m.start() for m in _LINE_BREAK.finditer(text))
        self.sentence_ends = _trimmed_ends(text, sentence_ends)
        words = [(m.start(), m.end()) for m in _WORD.finditer(text)]
        self.text = text
        self.word_starts = [start for start, _ in words]
        self.word_ends = [end for _, end in words]
        # Where the text resumes after each sentence end: where an overlap reads most naturally.
        self.sentence_starts = sorted(
            {start for end in self.sentence_ends if (start := self.first_start_at_or_after(end)) is not None}
        )

    def first_start_at_or_after(self, position: int) -> int | None:
        """The first non-blank position at or after ``position``: the next word's start, or
        ``position`` itself inside a run without spaces (CJK text after a full stop)."""
        if position < len(self.text) and not self.text[position].isspace():
            return position
        i = bisect.bisect_left(self.word_starts, position)
        return self.word_starts[i] if i < len(self.word_starts) else None


def _trimmed_ends(text: str, positions: Iterable[int]) -> list[int]:
    """Each position moved back over trailing whitespace, so a chunk never ends in blanks."""
    ends = set()
    for position in positions:
        end = position
        while end > 0 and text[end - 1].isspace():
            end -= 1
        if end > 0:
            ends.add(end)
    return sorted(ends)


def _latest(sorted_positions: list[int], low: int, high: int) -> int | None:
    """The largest position in ``[low, high]``, or None."""
    i = bisect.bisect_right(sorted_positions, high)
    if i and sorted_positions[i - 1] >= low:
        return sorted_positions[i - 1]
    return None


def _earliest(sorted_positions: list[int], low: int, high: int) -> int | None:
    """The smallest position in ``[low, high)``, or None."""
    i = bisect.bisect_left(sorted_positions, low)
    if i < len(sorted_positions) and sorted_positions[i] < high:
        return sorted_positions[i]
    return None


def chunk_text(content: str, config: ChunkingConfig | None = None) -> list[Chunk]:
    """Split ``content`` into overlapping chunks; empty or whitespace-only content gives no chunks."""
    config = config or ChunkingConfig()
    target, overlap = config.target_chars, config.overlap_chars
    bounds = _Boundaries(content)
    if not bounds.word_starts:
        return []
    text_end = bounds.word_ends[-1]
    # A strong break (paragraph, sentence) is only worth taking if the chunk is at least this full;
    # otherwise the last word that fits is the better end.
    strong_floor = target // 2

    chunks: list[Chunk] = []
    start = bounds.word_starts[0]
    previous_end = 0
    while True:
        limit = start + target
        if text_end <= limit:
            chunks.append(Chunk(len(chunks), start, text_end, content[start:text_end]))
            return chunks
        # Every chunk must reach past the previous one's end, or it would only repeat the overlap.
        floor = max(start + 1, previous_end + 1)
        end = (
            _latest(bounds.paragraph_ends, max(start + strong_floor, floor), limit)
            or _latest(bounds.sentence_ends, max(start + strong_floor, floor), limit)
            or _latest(bounds.word_ends, floor, limit)
        )
        if end is None:
            # One word longer than a whole chunk: the only case where a word is cut. The rest of it
            # continues right at the cut, with no overlap (an overlap would have to start mid-word).
            chunks.append(Chunk(len(chunks), start, limit, content[start:limit]))
            start = previous_end = limit
            continue
        chunks.append(Chunk(len(chunks), start, end, content[start:end]))
        start, previous_end = _next_start(bounds, start, end, overlap), end


def _next_start(bounds: _Boundaries, start: int, end: int, overlap: int) -> int:
    """Where the chunk after ``content[start:end]`` begins: at the earliest sentence (else word) start
    within its last ``overlap`` characters, else at the first word after it."""
    low = max(end - overlap, start + 1)
    if overlap > 0:
        for candidates in (bounds.sentence_starts, bounds.word_starts):
            found = _earliest(candidates, low, end)
            if found is not None:
                return found
    following = bounds.first_start_at_or_after(end)
    # Only called while text remains after ``end``, so something always follows.
    assert following is not None
    return following


def query_terms(query: str) -> list[str]:
    """The distinct, lower-cased words of a query that say what it is about (stopwords dropped)."""
    seen: dict[str, None] = {}
    for term in _TERM.findall(query.lower()):
        if term not in _STOPWORDS and (len(term) > 1 or term.isdigit()):
            seen.setdefault(term, None)
    return list(seen)


def snippet(chunk_text: str, query: str, max_chars: int = SNIPPET_MAX_CHARS) -> str:
    """The part of a chunk, at most ``max_chars`` long, that covers the most distinct query terms.

    Whitespace runs become single spaces (a snippet is shown on one line). Terms match the start of
    words, case-insensitively ("pass" finds "Password"). With no term in the chunk, the snippet is
    the chunk's start. A cut side is marked with "…"; words are never cut unless one word alone is
    longer than the snippet.
    """
    if max_chars < 10:
        raise ValueError(f"max_chars must be at least 10, got {max_chars}")
    text = " ".join(chunk_text.split())
    if len(text) <= max_chars:
        return text
    terms = query_terms(query)
    occurrences: list[tuple[int, int, str]] = []
    if terms:
        pattern = re.compile(r"\b(" + "|".join(re.escape(t) for t in terms) + r")\w*", re.IGNORECASE)
        occurrences = [(m.start(), m.end(), m.group(1).lower()) for m in pattern.finditer(text)]
    if not occurrences:
        return _window(text, 0, 0, max_chars)
    # Two pointers over the occurrences: the window [i, j] holding the most distinct terms (then the
    # most occurrences, then the earliest) whose span still fits in the snippet.
    budget = max_chars - 2 * len(ELLIPSIS)
    best = (0, 0, 0, 0)  # distinct, count, first, last
    counts: Counter[str] = Counter()
    j = 0
    for i in range(len(occurrences)):
        while j < len(occurrences) and occurrences[j][1] - occurrences[i][0] <= budget:
            counts[occurrences[j][2]] += 1
            j += 1
        if j > i:
            score = (len(counts), j - i)
            if score > best[:2]:
                best = (score[0], score[1], i, j - 1)
            counts[occurrences[i][2]] -= 1
            if not counts[occurrences[i][2]]:
                del counts[occurrences[i][2]]
        else:
            j = i + 1
    first, last = occurrences[best[2]], occurrences[best[3]]
    return _window(text, first[0], max(last[1], first[0]), max_chars)


def _window(text: str, span_start: int, span_end: int, max_chars: int) -> str:
    """At most ``max_chars`` of ``text`` around ``[span_start, span_end)``, snapped to words, with "…"
    on each cut side."""
    room = max_chars - 2 * len(ELLIPSIS)
    slack = max(room - (span_end - span_start), 0)
    # Some context before the terms reads better than none, but most of it goes after them.
    start = max(span_start - slack // 3, 0)
    end = min(start + room, len(text))
    if end == len(text):
        start = max(end - room, 0)
    if start > 0 and not text[start - 1].isspace():
        # Move forward to the next word start, unless that would skip past the terms.
        next_space = text.find(" ", start, span_start + 1)
        if next_space != -1:
            start = next_space + 1
    if end < len(text) and not text[end].isspace():
        previous_space = text.rfind(" ", max(span_end, start + 1), end)
        if previous_space != -1:
            end = previous_space
    piece = text[start:end].strip()
    return (ELLIPSIS if start > 0 else "") + piece + (ELLIPSIS if end < len(text) else "")
