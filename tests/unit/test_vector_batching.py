"""BatchingEmbedder: concurrent callers share embedding calls, one call at a time on a thread
that yields the cores, and each caller gets exactly its own texts' vectors, whatever happens to
the others."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import Sequence

import pytest

from services.vector.embeddings import BatchingEmbedder, LexicalEmbedder, Vectors


class RecordingEmbedder:
    """The lexical embedder, slowed down and watched: every call's texts, and how many ran at once."""

    name = "recording"
    dimensions = 384

    def __init__(self, *, fail_on: str = "") -> None:
        self.lexical = LexicalEmbedder()
        self.calls: list[list[str]] = []
        self.running = 0
        self.most_at_once = 0
        self.fail_on = fail_on
        self.niceness: list[int] = []
        self.lock = threading.Lock()

    async def embed(self, texts: Sequence[str]) -> Vectors:
        return await asyncio.to_thread(self.embed_sync, texts)

    def embed_sync(self, texts: Sequence[str]) -> Vectors:
        with self.lock:
            self.calls.append(list(texts))
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        if sys.platform == "linux":
            self.niceness.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        try:
            time.sleep(0.02)
            if self.fail_on and self.fail_on in texts:
                raise RuntimeError(f"cannot embed {self.fail_on!r}")
            return self.lexical.embed_sync(texts)
        finally:
            with self.lock:
                self.running -= 1


def texts_of(caller: int, count: int) -> list[str]:
    return [f"caller {caller} text {n}" for n in range(count)]


async def test_callers_arriving_during_a_call_share_the_next_one() -> None:
    inner = RecordingEmbedder()
    batching = BatchingEmbedder(inner, max_texts=64)
    first = asyncio.create_task(batching.embed(texts_of(0, 3)))
    while not inner.calls:
        await asyncio.sleep(0)
    answers = [await first, *await asyncio.gather(*(batching.embed(texts_of(caller, 3)) for caller in range(1, 10)))]
    assert inner.calls[0] == texts_of(0, 3), "the first caller starts without waiting for company"
    assert inner.calls[1] == [text for caller in range(1, 10) for text in texts_of(caller, 3)]
    assert len(inner.calls) == 2
    assert inner.most_at_once == 1
    for caller, vectors in enumerate(answers):
        assert vectors == LexicalEmbedder().embed_sync(texts_of(caller, 3)), "each caller gets its own vectors"


async def test_a_shared_call_holds_at_most_max_texts_but_never_splits_a_caller() -> None:
    inner = RecordingEmbedder()
    batching = BatchingEmbedder(inner, max_texts=5)
    await asyncio.gather(*(batching.embed(texts_of(caller, size)) for caller, size in enumerate([1, 2, 2, 2, 7, 1])))
    assert [len(call) for call in inner.calls] == [1 + 2 + 2, 2, 7, 1]
    assert inner.most_at_once == 1


async def test_a_failed_call_fails_only_its_callers() -> None:
    inner = RecordingEmbedder(fail_on="poison")
    batching = BatchingEmbedder(inner)
    first = asyncio.create_task(batching.embed(["fine"]))
    await asyncio.sleep(0)
    poisoned = asyncio.gather(batching.embed(["poison"]), batching.embed(["shares the poisoned call"]))
    assert len(await first) == 1
    with pytest.raises(RuntimeError, match="cannot embed 'poison'"):
        await poisoned
    assert await batching.embed(["after the failure"]) == LexicalEmbedder().embed_sync(["after the failure"])


async def test_a_caller_that_gives_up_leaves_the_others_their_answers() -> None:
    inner = RecordingEmbedder()
    batching = BatchingEmbedder(inner)
    running = asyncio.create_task(batching.embed(["running"]))
    await asyncio.sleep(0)
    impatient = asyncio.create_task(batching.embed(["impatient"]))
    patient = asyncio.create_task(batching.embed(["patient"]))
    await asyncio.sleep(0)
    impatient.cancel()
    assert await patient == LexicalEmbedder().embed_sync(["patient"])
    assert await running == LexicalEmbedder().embed_sync(["running"])
    assert all("impatient" not in call for call in inner.calls), "nobody embeds for a caller who left"


async def test_it_names_the_model_it_wraps_and_embeds_nothing_for_nothing() -> None:
    inner = RecordingEmbedder()
    batching = BatchingEmbedder(inner)
    assert (batching.name, batching.dimensions) == ("recording", 384)
    assert await batching.embed([]) == []
    assert inner.calls == []
    with pytest.raises(ValueError, match="max_texts must be positive"):
        BatchingEmbedder(inner, max_texts=0)


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are a Linux feature")
async def test_the_bulk_thread_yields_the_cores_and_the_caller_s_does_not() -> None:
    inner = RecordingEmbedder()
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    await BatchingEmbedder(inner, niceness=7).embed(["bulk"])
    await inner.embed(["not through the batcher"])
    assert inner.niceness == [min(19, own + 7), own]
