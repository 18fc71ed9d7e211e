"""Quantised (int8, binary) and approximate (HNSW, IVF) candidate search over an index's rows, rescored in float32.

This is the one approximate-search path of the package: an index's ``precision`` names it. It imports nothing from
:mod:`mm_sbert.retrieval.embedding_index` (the index imports it), so the two never form an import circle.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch

from mm_sbert.errors import InvalidInputError, MissingFileError

Precision = Literal["float32", "int8", "binary", "hnsw", "ivf"]
PRECISIONS: tuple[str, ...] = ("float32", "int8", "binary", "hnsw", "ivf")
CONFIG_FILE = "vector_search.json"
INT8_CODES_FILE = "vector_search.int8.npy"
INT8_RANGES_FILE = "vector_search.ranges.npy"
FAISS_FILE = "vector_search.faiss"
FILES = (CONFIG_FILE, INT8_CODES_FILE, INT8_RANGES_FILE, FAISS_FILE)


def build_faiss_index(embeddings: np.ndarray, factory: str, train_size: int = 100_000, chunk_size: int = 65536) -> Any:
    """A FAISS inner-product index over normalised rows, trained on a sample when the factory needs training."""
    import faiss

    ann = faiss.index_factory(embeddings.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    if not ann.is_trained:
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(len(embeddings), size=min(train_size, len(embeddings)), replace=False))
        ann.train(np.ascontiguousarray(embeddings[sample], dtype=np.float32))
    for start in range(0, len(embeddings), chunk_size):
        ann.add(np.ascontiguousarray(embeddings[start : start + chunk_size], dtype=np.float32))
    return ann


def default_factory(precision: str, count: int) -> str:
    """The FAISS factory string of ``precision="hnsw"`` / ``"ivf"`` for a collection of ``count`` rows."""
    if precision == "hnsw":
        return "HNSW32"
    # sqrt(N) lists (the low end of FAISS' 1-16 x sqrt(N) rule: k-means training stays about a minute at 1M on one
    # core), each trained with >= 39 points.
    nlist = max(1, min(int(math.sqrt(count)), count // 39))
    return f"IVF{nlist},Flat"


def default_search_parameters(precision: str, factory: str) -> str:
    """FAISS search parameters that keep recall@20 high: a wide HNSW beam, or 1/8 of the IVF lists (at least 16)
    probed: a few lists miss many neighbours of a query near list borders (recall@20 0.09 with 1 of 25 lists)."""
    if precision == "hnsw":
        return "efSearch=128"
    if precision == "binary" and factory:
        # A binary IVF is for collections where even the flat code scan is too slow (10M: 115 ms on the loaded
        # 2-core machine): 1/16 of the lists keeps the scan short; widen nprobe where recall needs it.
        nlist = int(factory.split(",")[0].removeprefix("BIVF") or 1)
        return f"nprobe={max(min(nlist, 16), nlist // 16)}"
    if precision == "ivf" and factory.startswith("IVF"):
        nlist = int(factory.split(",")[0].removeprefix("IVF") or 1)
        return f"nprobe={max(min(nlist, 16), nlist // 8)}"
    return ""


class VectorSearch:
    """Candidate search over ``[N, D]`` normalised rows in a cheaper form, then float32 rescoring of the candidates.

    An :class:`~mm_sbert.EmbeddingIndex` built with ``precision`` other than ``"float32"`` delegates its search here:

    - ``"int8"``: the host's ``quantize_embeddings(..., "int8")`` codes (one symmetric range for all dimensions,
      so the codes' inner product follows the float one), scanned exactly by usearch; 4x less memory than float32.
    - ``"binary"``: ``quantize_embeddings(..., "ubinary")`` sign bits in a FAISS binary flat index (Hamming
      distance); 32x less; with ``factory="BIVF<n>"`` a binary inverted file over the codes (for ~10M rows, where
      the flat scan itself becomes the cost). :meth:`add` grows it chunk by chunk (streamed builds).
    - ``"hnsw"`` / ``"ivf"``: a FAISS graph (``HNSW32``) or inverted-file (``IVF<n>,Flat``) index, or any FAISS
      ``factory`` string (e.g. ``"IVF4096,PQ32"`` for collections that do not fit in memory as float32).

    Each finds ``rescore_multiplier * top_k`` candidates; their float32 rows (memory-mapped, so only the candidates
    are read) are scored against the float32 query and the best ``top_k`` returned. Whenever the true top-k rows are
    among the candidates, the result equals exact search.

    Args:
        precision: one of ``"int8"``, ``"binary"``, ``"hnsw"``, ``"ivf"``.
        rescore_multiplier: candidates per requested hit.
        factory: the FAISS factory string for ``"hnsw"`` / ``"ivf"`` (default: :func:`default_factory`), or a binary
            IVF (``"BIVF4096"``) for ``"binary"`` (default: a flat scan).
        search_parameters: FAISS search parameters, e.g. ``"efSearch=256"`` or ``"nprobe=32"``.
    """

    def __init__(
        self,
        precision: Precision,
        rescore_multiplier: int = 4,
        factory: str | None = None,
        search_parameters: str | None = None,
    ) -> None:
        if precision not in PRECISIONS or precision == "float32":
            raise InvalidInputError(
                f"VectorSearch precision must be one of {[p for p in PRECISIONS if p != 'float32']}, got {precision!r}"
            )
        if int(rescore_multiplier) < 1:
            raise InvalidInputError(f"rescore_multiplier must be >= 1, got {rescore_multiplier}")
        if factory is not None and precision not in ("hnsw", "ivf", "binary"):
            raise InvalidInputError(f"factory= applies to precision 'hnsw', 'ivf' or 'binary', not {precision!r}")
        if factory is not None and precision == "binary" and not factory.startswith("BIVF"):
            raise InvalidInputError(f"A binary factory is a FAISS binary IVF such as 'BIVF4096', got {factory!r}")
        self.precision = precision
        self.rescore_multiplier = int(rescore_multiplier)
        self.factory = factory
        self.search_parameters = search_parameters
        self._codes: np.ndarray | None = None  # int8 codes
        self._ranges: np.ndarray | None = None  # int8 per-dimension [min; max]
        self._faiss: Any = None  # binary or float FAISS index

    def __repr__(self) -> str:
        return (
            f"VectorSearch(precision={self.precision!r}, rescore_multiplier={self.rescore_multiplier}, "
            f"factory={self.factory!r}, search_parameters={self.search_parameters!r})"
        )

    # ------------------------------------------------------------------ building

    def build(self, embeddings: np.ndarray) -> VectorSearch:
        """Build the candidate structure over normalised ``[N, D]`` rows (float32 or float16); returns ``self``."""
        from sentence_transformers.util.quantization import quantize_embeddings

        if embeddings.ndim != 2 or len(embeddings) == 0:
            raise InvalidInputError(f"VectorSearch.build needs a non-empty [N, D] array, got shape {embeddings.shape}")
        if self.precision == "int8":
            # One symmetric range [-m, m] for every dimension, so a code is ~ x / step and code . code ~ x . q:
            # per-dimension [min, max] ranges (the host's default) rescale and shift each dimension differently,
            # which distorts the inner product (recall@5 of the candidates 0.4 instead of 0.9 on clustered data).
            # Chunked, so a memory-mapped 1M collection is never copied at once.
            bound = max(float(np.abs(chunk).max()) for chunk in _chunks(embeddings))
            self._ranges = np.array([[-bound], [bound]], dtype=np.float32).repeat(embeddings.shape[1], axis=1)
            self._codes = np.concatenate(
                [quantize_embeddings(chunk, "int8", ranges=self._ranges) for chunk in _chunks(embeddings)]
            )
        elif self.precision == "binary":
            if self.factory:
                rng = np.random.default_rng(0)
                sample = np.sort(rng.choice(len(embeddings), size=min(100_000, len(embeddings)), replace=False))
                self.train(embeddings[sample])
            self.add(embeddings)
        else:
            self.factory = self.factory or default_factory(self.precision, len(embeddings))
            self._faiss = build_faiss_index(embeddings, self.factory)
        if self.search_parameters is None:
            self.search_parameters = default_search_parameters(self.precision, self.factory or "")
        return self

    def train(self, sample: np.ndarray) -> VectorSearch:
        """Train a ``"binary"`` search with an IVF ``factory`` (e.g. ``"BIVF4096"``: k-means over the sign codes) on
        normalised sample rows, before :meth:`add`; returns ``self``."""
        from sentence_transformers.util.quantization import quantize_embeddings

        if self.precision != "binary" or not self.factory:
            raise InvalidInputError("train() applies to precision='binary' with an IVF factory such as 'BIVF4096'")
        self._binary_index(sample.shape[1])
        self._faiss.train(_as_uint8(quantize_embeddings(np.asarray(sample, dtype=np.float32), "ubinary")))
        return self

    def add(self, embeddings: np.ndarray) -> VectorSearch:
        """Append normalised rows to a ``"binary"`` search: a streamed build adds its chunks one by one, keeping
        only the 1-bit codes in memory. Returns ``self``."""
        from sentence_transformers.util.quantization import quantize_embeddings

        if self.precision != "binary":
            raise InvalidInputError(f"add() builds a 'binary' search incrementally; {self.precision!r} needs build()")
        self._binary_index(embeddings.shape[1])
        if not self._faiss.is_trained:
            raise InvalidInputError(f"The binary {self.factory} index must be trained first: call train(sample)")
        for chunk in _chunks(embeddings):
            self._faiss.add(_as_uint8(quantize_embeddings(chunk, "ubinary")))
        if self.search_parameters is None:
            self.search_parameters = default_search_parameters(self.precision, self.factory or "")
        return self

    def _binary_index(self, dim: int) -> None:
        if self._faiss is None:
            import faiss

            width = _binary_width(dim)
            self._faiss = (
                faiss.index_binary_factory(width, self.factory) if self.factory else faiss.IndexBinaryFlat(width)
            )

    # ------------------------------------------------------------------ search

    def candidates(self, queries: torch.Tensor | np.ndarray, count: int, workers: int = 1) -> np.ndarray:
        """Rows of the ``count`` best candidates per query ``[Q, count]`` (``-1`` where the index found fewer).

        ``workers``: threads for the int8 scan where more than torch's current count (see
        :meth:`~mm_sbert.ThreadPolicy.block_scan_threads`: usearch hands each thread its own rows and merges once).
        """
        from sentence_transformers.util.quantization import quantize_embeddings

        queries = np.ascontiguousarray(torch.as_tensor(queries).float().numpy())
        if self.precision == "int8":
            from usearch.index import MetricKind
            from usearch.index import search as usearch_search

            count = min(count, len(self._codes))
            matches = usearch_search(
                self._codes,
                quantize_embeddings(queries, "int8", ranges=self._ranges),
                count,
                MetricKind.IP,
                exact=True,
                threads=max(workers, torch.get_num_threads()),
            )
            keys = np.asarray(matches.keys, dtype=np.int64).reshape(len(queries), -1)
            # One query gives usearch's Matches (only its found keys), several its BatchMatches (padded, .counts).
            counts = np.asarray(matches.counts if hasattr(matches, "counts") else [len(matches.keys)]).reshape(-1)
            if keys.shape[1] < count:
                keys = np.pad(keys, ((0, 0), (0, count - keys.shape[1])), constant_values=-1)
            keys[np.arange(keys.shape[1])[None, :] >= counts[:, None]] = -1
            return keys
        if self._faiss is None:
            raise RuntimeError("This VectorSearch was not built; call build(embeddings) or load(folder) first")
        count = min(count, self._faiss.ntotal)
        if self.precision == "binary":
            for name, value in _parameters(self.search_parameters):
                # FAISS has no ParameterSpace for binary indexes; an IVF's nprobe is an attribute.
                setattr(self._faiss, name, value)
            _, rows = self._faiss.search(_as_uint8(quantize_embeddings(queries, "ubinary")), count)
            return rows.astype(np.int64)
        if self.search_parameters:
            import faiss

            faiss.ParameterSpace().set_index_parameters(self._faiss, self.search_parameters)
        _, rows = self._faiss.search(queries, count)
        return rows.astype(np.int64)

    def search(
        self, queries: torch.Tensor, top_k: int, embeddings: np.ndarray, workers: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k rows of normalised ``queries`` ``[Q, D]``: candidates (``workers`` as in :meth:`candidates`), then
        float32 rescoring with ``embeddings``.

        Returns:
            ``(scores, rows)``, both ``[Q, min(top_k, N)]``, best first, scores are float32 cosine similarities.

        Raises:
            RuntimeError: the index returned fewer than ``top_k`` candidates for a query (e.g. a small IVF probe).
        """
        k = min(top_k, len(embeddings))
        rows = self.candidates(queries, k * self.rescore_multiplier, workers)
        valid = rows >= 0
        if (valid.sum(axis=1) < k).any():
            raise RuntimeError(
                f"The {self.precision} index returned fewer than {k} candidates; widen its search (e.g. "
                "search_parameters='nprobe=...' / 'efSearch=...', a larger rescore_multiplier) or search with "
                "exact=True"
            )
        # Read each candidate row once, in file order: a memory-mapped collection pages in only these rows.
        unique, inverse = np.unique(np.where(valid, rows, rows.max()), return_inverse=True)
        candidate_vectors = torch.from_numpy(np.asarray(embeddings[unique], dtype=np.float32))
        queries = torch.as_tensor(queries).float()
        all_scores = (queries @ candidate_vectors.T).gather(1, torch.from_numpy(inverse.reshape(rows.shape)))
        all_scores = all_scores.masked_fill(torch.from_numpy(~valid), float("-inf"))
        scores, order = all_scores.topk(k, dim=1)
        return scores, torch.from_numpy(rows).gather(1, order)

    # ------------------------------------------------------------------ persistence

    def write_files(self, folder: str) -> list[str]:
        """Write the configuration and the codes / FAISS index into ``folder`` (for
        :class:`~mm_sbert.retrieval.IndexWriter`, whose manifest lists and checks them like the index's own files);
        returns the names written. Each file goes straight to disk: at 10M rows the codes are half a GiB, and a copy
        in memory on the way would double the peak of a streamed build."""
        config = {
            "precision": self.precision,
            "rescore_multiplier": self.rescore_multiplier,
            "factory": self.factory,
            "search_parameters": self.search_parameters,
        }
        with open(os.path.join(folder, CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump(config, f)
        names = [CONFIG_FILE]
        if self.precision == "int8":
            np.save(os.path.join(folder, INT8_CODES_FILE), np.ascontiguousarray(self._codes), allow_pickle=False)
            np.save(os.path.join(folder, INT8_RANGES_FILE), np.ascontiguousarray(self._ranges), allow_pickle=False)
            names += [INT8_CODES_FILE, INT8_RANGES_FILE]
        else:
            import faiss

            write = faiss.write_index_binary if self.precision == "binary" else faiss.write_index
            write(self._faiss, os.path.join(folder, FAISS_FILE))
            names.append(FAISS_FILE)
        return names

    @classmethod
    def from_faiss_file(cls, path: str, factory: str | None) -> VectorSearch:
        """The search of an index folder written with the retired ``build_ann`` (a ``faiss.index`` file beside the
        rows): served as the ``"hnsw"`` (HNSW factories) or ``"ivf"`` precision, with its own search parameters."""
        import faiss

        precision = "hnsw" if (factory or "").upper().startswith("HNSW") else "ivf"
        search = cls(precision, factory=factory, search_parameters="")
        search._faiss = faiss.read_index(path)
        return search

    @classmethod
    def load(cls, paths: Mapping[str, str], mmap: bool = True) -> VectorSearch:
        """Reopen the files :meth:`write_files` made, given as name -> (verified) path (int8 codes memory-mapped
        unless ``mmap=False``)."""
        if CONFIG_FILE not in paths:
            raise MissingFileError(f"The vector search needs {CONFIG_FILE}")
        with open(paths[CONFIG_FILE], encoding="utf-8") as f:
            config = json.load(f)
        search = cls(config["precision"], config["rescore_multiplier"], config["factory"])
        search.search_parameters = config["search_parameters"]
        if search.precision == "int8":
            if INT8_CODES_FILE not in paths or INT8_RANGES_FILE not in paths:
                raise MissingFileError(f"The int8 vector search needs {INT8_CODES_FILE} and {INT8_RANGES_FILE}")
            search._codes = np.load(paths[INT8_CODES_FILE], mmap_mode="r" if mmap else None, allow_pickle=False)
            search._ranges = np.load(paths[INT8_RANGES_FILE], allow_pickle=False)
        else:
            import faiss

            if FAISS_FILE not in paths:
                raise MissingFileError(f"The {search.precision} vector search needs {FAISS_FILE}")
            path = paths[FAISS_FILE]
            search._faiss = faiss.read_index_binary(path) if search.precision == "binary" else faiss.read_index(path)
        return search


def _parameters(text: str | None) -> list[tuple[str, int]]:
    """``"nprobe=64"`` -> ``[("nprobe", 64)]``."""
    pairs = []
    for part in (text or "").split(","):
        if part.strip():
            name, _, value = part.partition("=")
            pairs.append((name.strip(), int(value)))
    return pairs


def _chunks(embeddings: np.ndarray, size: int = 65536):
    for start in range(0, len(embeddings), size):
        yield np.asarray(embeddings[start : start + size], dtype=np.float32)


def _binary_width(dim: int) -> int:
    # FAISS binary indexes take a multiple of 8 bits; packbits already pads the last byte with zeros.
    return 8 * math.ceil(dim / 8)


def _as_uint8(packed: np.ndarray) -> np.ndarray:
    # FAISS binary indexes take contiguous uint8 codes, which quantize_embeddings(..., 'ubinary') yields.
    return np.ascontiguousarray(packed, dtype=np.uint8)
