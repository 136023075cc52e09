"""services.chat.composer: the extractive composer quotes the most relevant sentences of the
retrieved chunks, cites exactly the chunks it quotes, stays within its length, never writes a
sentence that is not in a chunk, and writes nothing when nothing is relevant."""

from __future__ import annotations

import re

import pytest

from services.chat.composer import (
    ANSWER_HEADING,
    ELLIPSIS,
    MAX_QUOTED_CHARS,
    AnswerComposer,
    ExtractiveComposer,
    extractive_answer,
    select_passages,
    sentences_of,
    stem,
)
from services.chat.domain import SNIPPET_MAX, AnswerDelta, AnswerKind, AnswerPart, Citation, RetrievedChunk

QUOTE = re.compile(r"^> (?P<sentence>.+) \[(?P<number>\d+)\]$")

REFUNDS = RetrievedChunk(
    document_id="11111111-1111-4111-8111-111111111111",
    space_id="aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa",
    document_version=3,
    chunk_index=0,
    text=(
        "Refunds are paid back to the original card within 14 days. Our office is closed on Sundays. "
        "A refund request needs the order number."
    ),
    score=0.81,
)
SHIPPING = RetrievedChunk(
    document_id="22222222-2222-4222-8222-222222222222",
    space_id="aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa",
    document_version=1,
    chunk_index=4,
    text="# Shipping\nParcels ship from Berlin.\n- Refund shipping labels are printed by support for free.",
    score=0.42,
)
CATS = RetrievedChunk(
    document_id="33333333-3333-4333-8333-333333333333",
    space_id="bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb",
    document_version=2,
    chunk_index=1,
    text="Cats sleep for most of the day. They like warm places.",
    score=0.12,
)


def answer_text(parts: list[AnswerPart]) -> str:
    return "".join(part.text for part in parts if isinstance(part, AnswerDelta))


def quotes(parts: list[AnswerPart]) -> list[tuple[str, int]]:
    """The quoted sentences of an answer with the citation number each refers to."""
    heading, *lines = answer_text(parts).split("\n")
    assert heading == ANSWER_HEADING
    found = []
    for line in lines:
        match = QUOTE.match(line)
        assert match, f"not a quote line: {line!r}"
        found.append((match["sentence"], int(match["number"])))
    return found


def citations(parts: list[AnswerPart]) -> list[Citation]:
    return [part for part in parts if isinstance(part, Citation)]


def test_the_most_relevant_sentences_are_quoted_most_relevant_first() -> None:
    passages = select_passages("How many days until refunds are paid back?", [SHIPPING, REFUNDS, CATS])
    sentences = [passage.sentence for passage in passages]
    assert sentences[0] == "Refunds are paid back to the original card within 14 days."
    assert "Our office is closed on Sundays." not in sentences  # shares no term with the question
    assert not any("Cats" in sentence for sentence in sentences)
    assert [passage.score for passage in passages] == sorted((p.score for p in passages), reverse=True)


def test_the_search_score_breaks_ties_between_equally_matching_sentences() -> None:
    low = RetrievedChunk("d-low", "s", 1, 0, "The refund policy is strict.", 0.1)
    high = RetrievedChunk("d-high", "s", 1, 0, "The refund window is short.", 0.9)
    passages = select_passages("refund", [low, high])
    assert [passage.chunk.document_id for passage in passages] == ["d-high", "d-low"]


def test_citations_are_the_chunks_quoted_numbered_in_the_order_sent() -> None:
    parts = extractive_answer(select_passages("refund labels card", [REFUNDS, SHIPPING, CATS]))
    cited = citations(parts)
    assert {c.document_id for c in cited} == {REFUNDS.document_id, SHIPPING.document_id}
    by_number = {number: citation for number, citation in enumerate(cited, start=1)}
    for sentence, number in quotes(parts):
        source = by_number[number]
        assert sentence in source.snippet, "each quote refers to the citation of the chunk it comes from"
    # A citation is sent before the first quote that refers to it.
    seen = 0
    for part in parts:
        if isinstance(part, Citation):
            seen += 1
        elif part.text.startswith("\n"):
            assert int(QUOTE.match(part.text.lstrip("\n"))["number"]) <= seen  # type: ignore[index]


def test_a_citation_carries_the_chunk_it_points_at() -> None:
    [citation] = citations(extractive_answer(select_passages("original card", [REFUNDS])))
    assert citation == Citation(
        document_id=REFUNDS.document_id,
        space_id=REFUNDS.space_id,
        chunk_index=REFUNDS.chunk_index,
        document_version=REFUNDS.document_version,
        snippet=REFUNDS.text,
        score=REFUNDS.score,
    )


def test_no_text_that_is_not_in_the_chunks() -> None:
    chunks = [REFUNDS, SHIPPING, CATS]
    parts = extractive_answer(select_passages("refund shipping labels cats card", chunks))
    assert quotes(parts), "the question matches something"
    for sentence, _ in quotes(parts):
        assert any(sentence in chunk.text for chunk in chunks)
    text = answer_text(parts)
    assert text.startswith(ANSWER_HEADING), "the answer says it quotes the documents"


def test_nothing_relevant_gives_no_answer_at_all() -> None:
    assert select_passages("quantum chromodynamics", [REFUNDS, CATS]) == []
    assert select_passages("refunds", []) == []
    assert extractive_answer([]) == []


def test_a_question_of_only_stopwords_finds_nothing() -> None:
    assert select_passages("What is it?", [REFUNDS, CATS]) == []


REFUND_RULES = [
    "Refunds for damaged goods are paid within five working days.",
    "A refund for digital downloads needs a ticket opened with support first.",
    "Refund requests after thirty days are declined, with a polite explanation.",
    "Gift cards bought with a refund cannot be exchanged for cash later on.",
    "Partial refund amounts are rounded down to the nearest whole cent.",
    "Refunded orders keep their invoice number for the accountants' records.",
    "Shipping costs are part of a refund only when the parcel arrived broken.",
    "Every refund is confirmed by email to the address used for the order.",
    "A second refund on one order needs the approval of a team lead.",
    "Refund disputes escalate to the payments team after one week of silence.",
]


def test_quotes_stay_within_the_length_cap() -> None:
    chunks = [RetrievedChunk(f"d{i}", "s", 1, 0, rule, 0.5) for i, rule in enumerate(REFUND_RULES)]
    assert sum(len(rule) for rule in REFUND_RULES) > MAX_QUOTED_CHARS
    passages = select_passages("refund", chunks)
    assert 1 < len(passages) < len(REFUND_RULES)
    assert sum(len(passage.sentence) for passage in passages) <= MAX_QUOTED_CHARS


def test_an_overlong_best_sentence_is_shortened_at_a_word_boundary() -> None:
    long_sentence = "Refunds " + "really " * 150 + "take time."
    passages = select_passages("refunds", [RetrievedChunk("d", "s", 1, 0, long_sentence, 0.5)], max_chars=100)
    [passage] = passages
    assert len(passage.sentence) <= 100
    assert passage.sentence.endswith(ELLIPSIS)
    assert long_sentence.startswith(passage.sentence.removesuffix(ELLIPSIS))


def test_the_same_sentence_in_two_chunks_is_quoted_once() -> None:
    sentence = "Refunds are paid back to the original card within 14 days."
    copy = RetrievedChunk("d2", "s", 1, 7, f"Intro text here. {sentence}", 0.6)
    passages = select_passages("refunds card days", [REFUNDS, copy])
    assert [passage.sentence for passage in passages].count(sentence) == 1


def test_sentences_and_lines_are_split_and_list_marks_dropped() -> None:
    assert sentences_of("# Title\n- First point here. Second point here!\n\n* Third one?") == [
        "Title",
        "First point here.",
        "Second point here!",
        "Third one?",
    ]


def test_the_unfinished_last_sentence_of_a_cut_snippet_is_dropped() -> None:
    text = ("Complete sentence about refunds. " * 40)[: SNIPPET_MAX - 20] + "and an unfinished refund clause"
    assert len(text) >= SNIPPET_MAX
    assert sentences_of(text)[-1] == "Complete sentence about refunds."
    assert sentences_of("Short and unfinished refund clause")[-1] == "Short and unfinished refund clause"


@pytest.mark.parametrize(
    ("word", "same_as"),
    [("refunds", "refund"), ("refunded", "refund"), ("issued", "issue"), ("policies", "policy"), ("indexes", "index")],
)
def test_stems_match_inflections(word: str, same_as: str) -> None:
    assert stem(word) == stem(same_as)


def test_stems_leave_short_and_latin_words_alone() -> None:
    assert stem("status") == "status"
    assert stem("bus") == "bus"
    assert stem("process") == "process"


async def test_the_composer_streams_the_same_parts_and_is_an_answer_composer() -> None:
    composer: AnswerComposer = ExtractiveComposer()
    assert composer.answer_kind is AnswerKind.EXTRACTIVE
    chunks = [REFUNDS, SHIPPING]
    streamed = [part async for part in composer.compose("refund order number", chunks)]
    assert streamed == extractive_answer(select_passages("refund order number", chunks))
    assert [part async for part in composer.compose("quantum chromodynamics", chunks)] == []
