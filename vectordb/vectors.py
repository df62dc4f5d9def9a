"""The rule for every vector the service accepts, in a document or a query: one module
that the write path (:mod:`ingest.validate`) and the read path (:mod:`query.engine`) both
use, so neither imports the other."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np

from vectordb.errors import InvalidArgument


def check_vector(vector: Any, dims: int, where: str) -> np.ndarray:
    """A finite float32 vector of ``dims`` numbers.

    Accepted: a JSON list of numbers (booleans and strings are not numbers), or a base64
    string of ``dims`` little-endian float32 values — the compact form for bulk ingest.
    """
    if isinstance(vector, str):
        try:
            raw = base64.b64decode(vector, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidArgument(f"{where}: vector string is not valid base64") from exc
        if len(raw) != 4 * dims:
            raise InvalidArgument(
                f"{where}: base64 vector has {len(raw)} bytes; {dims} float32 values are {4 * dims} bytes"
            )
        out = np.frombuffer(raw, "<f4").astype(np.float32)
        if not np.isfinite(out).all():
            raise InvalidArgument(f"{where}: vector contains NaN or infinite values")
        return out
    if not isinstance(vector, (list, tuple)):
        raise InvalidArgument(f"{where}: vector must be a list of numbers or a base64 float32 string")
    arr = np.array(vector) if vector else np.zeros(0)
    if arr.ndim != 1 or arr.dtype.kind not in "if" or bool in set(map(type, vector)):
        raise InvalidArgument(f"{where}: vector must be a flat list of numbers")
    if len(arr) != dims:
        raise InvalidArgument(f"{where}: vector has {len(arr)} dimensions, the namespace has {dims}")
    with np.errstate(over="ignore"):
        out = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise InvalidArgument(f"{where}: vector contains NaN or infinite values")
    if not np.isfinite(out).all():
        raise InvalidArgument(f"{where}: vector values overflow float32")
    return out
