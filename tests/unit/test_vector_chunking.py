"""services.vector.chunking: chunks are exact, word-aligned, bounded, overlapping slices of the
content that prefer paragraph and sentence ends; snippets centre on the query's terms."""

from __future__ import annotations

import itertools
import random
import re
import time

import pytest

from services.vector.chunking import (
    ELLIPSIS,
    Chunk,
    ChunkingConfig,
    chunk_text,
    query_terms,
    snippet,
)

VOCABULARY = (
    "index vector space document chunk embedding search query permission member owner editor viewer "
    "kafka event version tombstone latency recall cluster shard payload filter graph model token"
)
WORDS = VOCABULARY.split()


def _prose(rng: random.Random, paragraphs: int, sentences: tuple[int, int] = (2, 6)) -> str:
    parts = []
    for _ in range(paragraphs):
        sentence_list = []
        for _ in range(rng.randint(*sentences)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(4, 18))]
            sentence_list.append(" ".join(words).capitalize() + rng.choice([".", ".", "?", "!"]))
        parts.append(" ".join(sentence_list))
    return "\n\n".join(parts)


def _check_invariants(content: str, chunks: list[Chunk], config: ChunkingConfig) -> None:
    """What every chunking must satisfy, whatever the text."""
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert content[chunk.start : chunk.end] == chunk.text
        assert 0 < len(chunk.text) <= config.target_chars
        assert chunk.text == chunk.text.strip()
    for before, after in itertools.pairwise(chunks):
        assert before.start < after.start
        assert before.end < after.end
        # Overlap, when any, is bounded.
        assert before.end - after.start <= config.overlap_chars
    # Every word of the content is inside some chunk: nothing is lost between chunks.
    covered = bytearray(len(content))
    for chunk in chunks:
        covered[chunk.start : chunk.end] = b"\x01" * (chunk.end - chunk.start)
    assert all(covered[i] or content[i].isspace() for i in range(len(content)))


def _word_aligned(content: str, chunk: Chunk) -> bool:
    starts_clean = chunk.start == 0 or content[chunk.start - 1].isspace()
    ends_clean = chunk.end == len(content) or content[chunk.end].isspace()
    return starts_clean and ends_clean


@pytest.mark.parametrize("content", ["", " ", "\n\n\t  \n", "\u3000\u2003"])
def test_empty_or_blank_content_has_no_chunks(content: str) -> None:
    assert chunk_text(content) == []


def test_short_content_is_one_chunk_without_surrounding_blanks() -> None:
    content = "\n\n  Hello there, world.  \n"
    assert chunk_text(content) == [Chunk(0, 4, 23, "Hello there, world.")]


def test_chunks_are_exact_bounded_word_aligned_and_overlapping() -> None:
    rng = random.Random(7)
    content = _prose(rng, paragraphs=40)
    config = ChunkingConfig()
    chunks = chunk_text(content, config)
    assert len(chunks) > 5
    _check_invariants(content, chunks, config)
    assert all(_word_aligned(content, c) for c in chunks)
    # Chunks aim at the target: all but the last are at least half full.
    assert all(len(c.text) >= config.target_chars // 2 for c in chunks[:-1])
    # With sentences everywhere, consecutive chunks do share text.
    assert all(after.start < before.end for before, after in itertools.pairwise(chunks))


def test_chunks_prefer_paragraph_ends() -> None:
    rng = random.Random(1)
    paragraphs = [" ".join(rng.choice(WORDS) for _ in range(45)) + "." for _ in range(12)]
    content = "\n\n".join(paragraphs)
    chunks = chunk_text(content)
    paragraph_ends = {content.index(p) + len(p) for p in paragraphs}
    # Each chunk (~300-char paragraphs, 800-char chunks) ends where a paragraph ends.
    assert all(c.end in paragraph_ends for c in chunks)


def test_chunks_prefer_sentence_ends_within_a_paragraph() -> None:
    rng = random.Random(2)
    content = _prose(rng, paragraphs=1, sentences=(60, 60))
    chunks = chunk_text(content)
    assert len(chunks) > 3
    assert all(c.text[-1] in ".?!" for c in chunks)
    # Where a sentence starts within the overlap, the next chunk starts there, not mid-sentence.
    sentence_starts = [m.end() for m in re.finditer(r"[.?!] ", content)]
    overlap = ChunkingConfig().overlap_chars
    for before, after in itertools.pairwise(chunks):
        inside = [s for s in sentence_starts if before.end - overlap <= s < before.end]
        assert after.start == (inside[0] if inside else after.start)
        if inside:
            assert after.text[0].isupper()


def test_list_items_are_boundaries_but_wrapped_lines_are_not() -> None:
    wrapped = ("word " * 15 + "\n") * 30
    assert all(c.text.endswith("word") for c in chunk_text(wrapped))
    items = "\n".join(f"- item {i} " + "detail " * 12 for i in range(40))
    chunks = chunk_text(items)
    # A chunk ends at the end of a list item: the next line of the content starts with "- ".
    for chunk in chunks[:-1]:
        assert items[chunk.end :].lstrip(" ").startswith("\n- ")


def test_chunking_is_stable() -> None:
    content = _prose(random.Random(3), paragraphs=25)
    assert chunk_text(content) == chunk_text(content)
    assert chunk_text(content, ChunkingConfig(400, 50)) == chunk_text(content, ChunkingConfig(400, 50))


def test_configuration_is_honoured() -> None:
    content = _prose(random.Random(4), paragraphs=30)
    for config in (ChunkingConfig(300, 0), ChunkingConfig(500, 60), ChunkingConfig(1200, 200)):
        chunks = chunk_text(content, config)
        _check_invariants(content, chunks, config)
        if config.overlap_chars == 0:
            assert all(a.end <= b.start for a, b in itertools.pairwise(chunks))


@pytest.mark.parametrize(("target", "overlap"), [(10, 0), (800, 401), (800, -1)])
def test_invalid_configuration_is_refused(target: int, overlap: int) -> None:
    with pytest.raises(ValueError, match="_chars"):
        ChunkingConfig(target, overlap)


def test_a_word_longer_than_a_chunk_is_the_only_thing_cut() -> None:
    content = "before the blob " + "x" * 2000 + " and after it"
    config = ChunkingConfig()
    chunks = chunk_text(content, config)
    _check_invariants(content, chunks, config)
    joined = "".join(c.text for c in chunks if "x" * 10 in c.text)
    assert "x" * 2000 in joined
    # Words other than the blob stay whole: every chunk edge not inside the blob is word-aligned.
    blob_start = content.index("x")
    blob_end = blob_start + 2000
    for chunk in chunks:
        if not blob_start < chunk.start < blob_end:
            assert chunk.start == 0 or content[chunk.start - 1].isspace()
        if not blob_start < chunk.end < blob_end:
            assert chunk.end == len(content) or content[chunk.end].isspace()


def test_a_long_run_without_spaces_is_split_evenly() -> None:
    assert [(c.start, c.end) for c in chunk_text("y" * 2000)] == [(0, 800), (800, 1600), (1600, 2000)]


def test_cjk_sentences_end_at_full_stops() -> None:
    content = "これは検索のための文書の一文です。" * 120
    chunks = chunk_text(content)
    _check_invariants(content, chunks, ChunkingConfig())
    assert all(c.text.endswith("。") for c in chunks)


@pytest.mark.parametrize("seed", range(40))
def test_random_texts_keep_the_invariants(seed: int) -> None:
    rng = random.Random(seed)
    pieces = []
    for _ in range(rng.randint(0, 400)):
        roll = rng.random()
        if roll < 0.02:
            pieces.append("z" * rng.randint(50, 1500))
        elif roll < 0.1:
            pieces.append(rng.choice(["\n\n", "\n", ". ", "! ", "\n- ", "   ", "\t"]))
        else:
            pieces.append(rng.choice(WORDS) + rng.choice([" ", " ", ", ", ". "]))
    content = "".join(pieces)
    config = ChunkingConfig(rng.choice([100, 300, 800]), rng.choice([0, 20, 50]))
    chunks = chunk_text(content, config)
    if content.strip():
        _check_invariants(content, chunks, config)
    else:
        assert chunks == []


def test_the_largest_document_is_chunked_quickly() -> None:
    content = _prose(random.Random(5), paragraphs=2000)
    content = content[: 256 * 1024]
    started = time.perf_counter()
    chunks = chunk_text(content)
    elapsed = time.perf_counter() - started
    _check_invariants(content, chunks, ChunkingConfig())
    assert len(chunks) > 300
    # Measured ~20 ms; a generous bound that still catches quadratic behaviour.
    assert elapsed < 2.0


# ---------------------------------------------------------------------------------------------
# snippet
# ---------------------------------------------------------------------------------------------

FILLER = " ".join(["lorem ipsum dolor sit amet consectetur"] * 20)


def test_query_terms_drop_stopwords_and_repeats() -> None:
    assert query_terms("How do I reset my password? Reset it!") == ["reset", "password"]
    assert query_terms("the of and") == []
    assert query_terms("version 2 of the API") == ["version", "2", "api"]


def test_a_short_chunk_is_its_own_snippet_on_one_line() -> None:
    assert snippet("Reset your\n\npassword   here.", "password") == "Reset your password here."


def test_snippet_centres_on_the_terms() -> None:
    text = f"{FILLER} To reset a forgotten password open the account page. {FILLER}"
    result = snippet(text, "How do I reset my password?")
    assert len(result) <= 240
    assert result.startswith(ELLIPSIS)
    assert result.endswith(ELLIPSIS)
    assert "reset a forgotten password" in result


def test_snippet_prefers_the_window_with_most_distinct_terms() -> None:
    text = f"password alone here. {FILLER} {FILLER} reset and password together. {FILLER}"
    result = snippet(text, "reset password", max_chars=120)
    assert "reset and password together" in result


def test_snippet_terms_match_word_starts_case_insensitively() -> None:
    text = f"{FILLER} The Passwords page lists them. {FILLER}"
    assert "Passwords page" in snippet(text, "PASS")


def test_snippet_without_terms_is_the_start_of_the_chunk() -> None:
    result = snippet(f"First words come first. {FILLER}", "zebra")
    assert result.startswith("First words come first.")
    assert result.endswith(ELLIPSIS)
    assert len(result) <= 240


@pytest.mark.parametrize("max_chars", [40, 100, 240, 500])
def test_snippet_never_cuts_words(max_chars: int) -> None:
    text = _prose(random.Random(6), paragraphs=3)
    words = set(" ".join(text.split()).split(" "))
    for query in ("filter payload", "zebra", "latency recall", "owner"):
        result = snippet(text, query, max_chars=max_chars)
        assert len(result) <= max_chars
        inner = result.strip(ELLIPSIS)
        assert all(word in words for word in inner.split(" "))


def test_snippet_refuses_a_tiny_budget() -> None:
    with pytest.raises(ValueError, match="max_chars"):
        snippet("some text", "text", max_chars=5)
