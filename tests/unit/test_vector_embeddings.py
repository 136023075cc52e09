"""services.vector.embeddings: both embedders give unit vectors of their dimensions, the lexical
one deterministically across processes, MiniLM with real meaning and without any network.

The MiniLM model loads once for this module (~0.2 s); its tests embed a handful of texts.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence

import pytest

from services.vector.embeddings import (
    LEXICAL_MODEL,
    MINILM_MODEL,
    Embedder,
    LexicalEmbedder,
    MiniLmEmbedder,
    embedder_from_name,
    minilm_files,
)


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _norm(vector: Sequence[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


SENTENCES = [
    "How do I reset my password?",
    "Steps to change a forgotten password",
    "Quarterly revenue grew by 12%",
    "",
    "--- !!! ---",
    "Ünïcödé wörds and 日本語のテキスト",
]


@pytest.fixture(scope="module")
def minilm() -> MiniLmEmbedder:
    return MiniLmEmbedder(threads=2)


# ---------------------------------------------------------------------------------------------
# lexical
# ---------------------------------------------------------------------------------------------


async def test_lexical_vectors_are_unit_length_with_384_dimensions() -> None:
    embedder = LexicalEmbedder()
    assert isinstance(embedder, Embedder)
    assert (embedder.name, embedder.dimensions) == (LEXICAL_MODEL, 384)
    vectors = await embedder.embed(SENTENCES)
    assert len(vectors) == len(SENTENCES)
    for vector in vectors:
        assert len(vector) == 384
        assert _norm(vector) == pytest.approx(1.0)


async def test_lexical_is_deterministic_and_order_preserving() -> None:
    embedder = LexicalEmbedder()
    forward = await embedder.embed(SENTENCES)
    backward = await embedder.embed(list(reversed(SENTENCES)))
    assert forward == list(reversed(backward))
    assert forward == await embedder.embed(SENTENCES)
    assert await embedder.embed([]) == []


def test_lexical_is_the_same_in_another_process_with_another_hash_seed() -> None:
    """blake2b, not hash(): a vector computed by another process must match the index's."""
    here = LexicalEmbedder().embed_sync(SENTENCES)
    script = (
        "import json, sys; from services.vector.embeddings import LexicalEmbedder;"
        "print(json.dumps(LexicalEmbedder().embed_sync(json.loads(sys.argv[1]))))"
    )
    for seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        output = subprocess.run(
            [sys.executable, "-c", script, json.dumps(SENTENCES)], env=env, capture_output=True, text=True, check=True
        ).stdout
        assert json.loads(output) == here


async def test_lexical_shared_words_mean_higher_cosine() -> None:
    query, related, unrelated = await LexicalEmbedder().embed(
        [
            "reset the admin password",
            "how to reset a password for an admin account",
            "quarterly revenue grew in the northern region",
        ]
    )
    assert _cosine(query, related) > _cosine(query, unrelated) + 0.2
    # Case and punctuation do not matter; word order matters a little (word pairs).
    same, shuffled = await LexicalEmbedder().embed(["Reset, the ADMIN password!", "password admin the reset"])
    assert _cosine(query, same) == pytest.approx(1.0)
    assert 0.5 < _cosine(query, shuffled) < 0.99


async def test_lexical_large_batches_go_through_a_thread_with_the_same_result() -> None:
    embedder = LexicalEmbedder()
    texts = [f"document {i} about vectors and spaces " * 40 for i in range(20)]
    assert sum(map(len, texts)) > LexicalEmbedder.INLINE_CHARS
    assert await embedder.embed(texts) == embedder.embed_sync(texts)


def test_lexical_other_dimensions() -> None:
    embedder = LexicalEmbedder(dimensions=64)
    assert embedder.name == "lexical-hash-64"
    assert len(embedder.embed_sync(["x"])[0]) == 64
    with pytest.raises(ValueError, match="dimensions"):
        LexicalEmbedder(dimensions=4)


# ---------------------------------------------------------------------------------------------
# MiniLM
# ---------------------------------------------------------------------------------------------


async def test_minilm_vectors_are_unit_length_with_384_dimensions(minilm: MiniLmEmbedder) -> None:
    assert isinstance(minilm, Embedder)
    assert (minilm.name, minilm.dimensions) == (MINILM_MODEL, 384)
    vectors = await minilm.embed(SENTENCES)
    assert len(vectors) == len(SENTENCES)
    for vector in vectors:
        assert len(vector) == 384
        assert _norm(vector) == pytest.approx(1.0, abs=1e-5)
    assert await minilm.embed([]) == []


async def test_minilm_knows_what_texts_mean(minilm: MiniLmEmbedder) -> None:
    query, paraphrase, unrelated = await minilm.embed(SENTENCES[:3])
    # No word in common but "password", yet far closer than an unrelated sentence.
    assert _cosine(query, paraphrase) > 0.6
    assert _cosine(query, unrelated) < 0.2
    synonyms = await minilm.embed(["The automobile would not start", "My car won't start", "I baked bread"])
    assert _cosine(synonyms[0], synonyms[1]) > _cosine(synonyms[0], synonyms[2]) + 0.3


async def test_minilm_is_deterministic_and_independent_of_the_batch(minilm: MiniLmEmbedder) -> None:
    long_text = "A much longer text about vector search and permission filters. " * 20
    alone = (await minilm.embed([SENTENCES[0]]))[0]
    batched = await minilm.embed([long_text, SENTENCES[0], SENTENCES[2]])
    # Padding to a longer neighbour is masked out of the pooling: same vector up to float noise.
    assert _cosine(alone, batched[1]) > 0.9999
    assert await minilm.embed(SENTENCES) == await minilm.embed(SENTENCES)
    for sync, asynchronous in zip(minilm.embed_sync(SENTENCES[:2]), await minilm.embed(SENTENCES[:2]), strict=True):
        assert _cosine(sync, asynchronous) > 0.9999


async def test_minilm_batches_keep_the_callers_order(minilm: MiniLmEmbedder) -> None:
    small_batches = MiniLmEmbedder(batch_size=2, threads=1)
    texts = [f"{'word ' * (i % 7)}text number {i}" for i in range(9)]
    many = await small_batches.embed(texts)
    one_by_one = [(await minilm.embed([t]))[0] for t in texts]
    for a, b in zip(many, one_by_one, strict=True):
        assert _cosine(a, b) > 0.9999


def test_minilm_text_past_256_word_pieces_is_not_seen(minilm: MiniLmEmbedder) -> None:
    prefix = "vector search " * 200
    a, b = minilm.embed_sync([prefix + "cats and dogs", prefix + "quarterly revenue"])
    assert _cosine(a, b) > 0.9999


def test_minilm_files_come_from_installed_packages() -> None:
    model, tokenizer = minilm_files()
    assert model.name == "model.onnx"
    assert model.stat().st_size > 20_000_000
    assert tokenizer.name == "tokenizer.json"
    assert "site-packages" in str(model)


def test_minilm_loads_and_embeds_with_no_network() -> None:
    """Every socket connection fails in the child, and the hub is told to stay offline: loading
    and embedding must still work, so nothing is fetched at run time."""
    script = """
import socket, sys
def refuse(*args, **kwargs):
    raise OSError("network disabled by the test")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
from services.vector.embeddings import MiniLmEmbedder
vector = MiniLmEmbedder(threads=1).embed_sync(["offline"])[0]
print(len(vector))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, "-c", script], check=False, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "384"


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------


def test_the_model_is_chosen_by_name() -> None:
    assert isinstance(embedder_from_name("lexical-hash-384"), LexicalEmbedder)
    minilm = embedder_from_name("all-MiniLM-L6-v2", threads=1)
    assert isinstance(minilm, MiniLmEmbedder)
    with pytest.raises(ValueError, match="unknown embedding model 'bert'"):
        embedder_from_name("bert")


@pytest.mark.parametrize(
    ("threads", "batch_size", "max_tokens", "message"),
    [(0, 32, 256, "threads"), (2, 0, 256, "batch_size"), (2, 32, 4, "max_tokens")],
)
def test_minilm_refuses_bad_options(threads: int, batch_size: int, max_tokens: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MiniLmEmbedder(threads=threads, batch_size=batch_size, max_tokens=max_tokens)
