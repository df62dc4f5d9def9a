"""An int8 segment's rows held as their codes: a quarter of the memory of float32.

An int8 partition stores one uint8 code per component and a quantizer of its own (per
component the lowest value and the step: value = lowest + code × step; see
:mod:`vectordb.segment`). A reader used to hold such partitions dequantized to float32,
four times their stored size: 10M × 384 vectors took 15.4 GB that way, so a worker with a
2 GiB cache held an eighth of them and every warm query fetched most of its partitions
again. Held as codes they take 3.8 GB.

Scans read the codes with FAISS's 8-bit scalar-quantizer kernel (``QT_8bit``, which decodes
vmin + (code + 0.5) / 255 × vdiff: our values, with vmin = lowest − step / 2 and
vdiff = 255 × step). It only picks rows: their scores are computed from :func:`dequantize`d
rows as everywhere else (:func:`vectordb.ivf.exact_scores`), so the kernel that found a row
does not change its score. Before FAISS is imported (a fresh worker's first query) a scan
dequantizes the block and uses numpy, as it did before.
"""

from __future__ import annotations

import threading

import numpy as np

_index_lock = threading.Lock()


def dequantize(codes: np.ndarray, quantizer: np.ndarray) -> np.ndarray:
    """float32 values of uint8 ``codes`` (n × dims, or one row) under ``quantizer`` (2 × dims)."""
    vectors = codes.astype(np.float32)
    vectors *= quantizer[1]
    vectors += quantizer[0]
    return vectors


class Int8Rows:
    """n × dims rows held as uint8 codes and their quantizer.

    Indexing (``rows[i]``, ``rows[array]``, ``rows[a:b]``) returns float32 values, dequantized;
    :meth:`dense` all of them. :meth:`index` is the FAISS index that scans the codes: made on
    the first FAISS scan, it then holds the codes (this object views them there rather than
    keep a second copy), and it lives as long as this object.
    """

    __slots__ = ("_codes", "_index", "quantizer")

    def __init__(self, codes: np.ndarray, quantizer: np.ndarray) -> None:
        self._codes = codes  # n × dims uint8
        self.quantizer = quantizer  # 2 × dims float32
        self._index = None

    def __len__(self) -> int:
        return len(self._codes)

    @property
    def shape(self) -> tuple[int, int]:
        return self._codes.shape

    @property
    def nbytes(self) -> int:
        return self._codes.nbytes + self.quantizer.nbytes

    def __getitem__(self, rows) -> np.ndarray:
        return dequantize(self._codes[rows], self.quantizer)

    def dense(self) -> np.ndarray:
        return dequantize(self._codes, self.quantizer)

    def index(self, faiss, metric: int):
        """An ``IndexScalarQuantizer`` over the codes that scores with ``metric`` (a FAISS
        metric). Made once (a segment has one metric); another metric gets an index of its
        own that is not kept."""
        index = self._index
        if index is None:
            with _index_lock:
                if self._index is None:
                    self._index = _make_index(faiss, self._codes, self.quantizer, metric)
                    n, dims = self._codes.shape
                    # The index copied the codes: view them there, and let the array go.
                    self._codes = faiss.rev_swig_ptr(self._index.codes.data(), n * dims).reshape(n, dims)
                index = self._index
        if index.metric_type != metric:
            return _make_index(faiss, self._codes, self.quantizer, metric)
        return index


def _make_index(faiss, codes: np.ndarray, quantizer: np.ndarray, metric: int):
    n, dims = codes.shape
    index = faiss.IndexScalarQuantizer(dims, faiss.ScalarQuantizer.QT_8bit, metric)
    low, step = quantizer[0].astype(np.float64), quantizer[1].astype(np.float64)
    trained = np.concatenate([low - step / 2, step * 255]).astype(np.float32)
    faiss.copy_array_to_vector(trained, index.sq.trained)
    index.is_trained = True
    faiss.copy_array_to_vector(np.ascontiguousarray(codes).reshape(-1), index.codes)
    index.ntotal = n
    return index
