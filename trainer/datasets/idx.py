"""The IDX format of the MNIST files: a 4-byte magic (0, 0, dtype code, ndim), ndim
big-endian uint32 sizes, then the values. MNIST uses dtype 0x08 (uint8)."""

from __future__ import annotations

import gzip
import hashlib
import struct
import zlib
from pathlib import Path

import numpy as np

from trainer.errors import DataError

DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09}


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode one uncompressed IDX blob; any inconsistency raises DataError naming `name`."""
    if len(data) < 4:
        raise DataError(f"{name}: truncated IDX file ({len(data)} bytes, no header)")
    zero, _, code, ndim = data[0], data[1], data[2], data[3]
    if zero != 0 or data[1] != 0 or code not in DTYPES or not 1 <= ndim <= 4:
        raise DataError(f"{name}: not an IDX file (magic {data[:4].hex()}; expected 0000 + dtype code + ndim)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: truncated IDX header ({len(data)} bytes, need {header})")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(DTYPES[code])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise DataError(f"{name}: {what}: {len(data)} bytes, shape {shape} needs {expected}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def read_idx_gz(path: Path) -> tuple[np.ndarray, str]:
    """Read a gzipped IDX file; returns (array, MD5 of the uncompressed content)."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated gzip ({e})") from None
    return parse_idx(data, str(path)), hashlib.md5(data).hexdigest()


def encode_idx(array: np.ndarray) -> bytes:
    """The inverse of parse_idx (for tests and tools)."""
    array = np.ascontiguousarray(array)
    code = CODES[array.dtype]
    return bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
