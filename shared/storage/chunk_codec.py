"""How a chunk's bytes are kept in the object store: zstd-compressed, or raw when they do not compress.

A stored chunk (the object ``chunks/<2 hex>/<hash>``) is one of two forms, told apart
by its first four bytes:

- a zstd frame (zstd's magic ``28 b5 2f fd``): every chunk written before raw chunks
  existed, and every chunk whose bytes compress;
- ``RAW_MAGIC`` followed by the chunk's plain bytes: a chunk that does not compress
  (media, archives, encrypted or already compressed data).

Which form is chosen is decided by compressing a small sample (``SAMPLE_SLICES`` slices
of ``SAMPLE_SLICE`` bytes spread over the chunk): zstd level 1 spends ~1 s of CPU per
GiB of random data to gain nothing, while the sample costs microseconds per chunk.
A chunk whose sample compresses is compressed whole, and still stored raw if the whole
did not shrink. Reading accepts both forms, so stores written by earlier versions read
as before. Either way the plain bytes are checked against the chunk's BLAKE3 name.

Pure functions without I/O; zstd contexts are per thread (they are not thread-safe),
since encoding and decoding run in worker threads.
"""

from __future__ import annotations

import threading

import blake3
import zstandard

from shared.platform.errors import DataLoss

# Level 1 compresses text nearly as well as level 3 at several times the speed.
ZSTD_LEVEL = 1
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Not a zstd frame's first bytes, so the two forms never read as each other.
RAW_MAGIC = b"TKR1"
# The sample: slices spread over the chunk, compressed together.
SAMPLE_SLICE = 4096
SAMPLE_SLICES = 4
# A sample that keeps more than this share of its size marks the chunk incompressible.
INCOMPRESSIBLE_RATIO = 0.9

_codecs = threading.local()

Buffer = bytes | bytearray | memoryview


def _compressor() -> zstandard.ZstdCompressor:
    compressor = getattr(_codecs, "compressor", None)
    if compressor is None:
        compressor = _codecs.compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return compressor


def _decompressor() -> zstandard.ZstdDecompressor:
    decompressor = getattr(_codecs, "decompressor", None)
    if decompressor is None:
        decompressor = _codecs.decompressor = zstandard.ZstdDecompressor()
    return decompressor


def sample(data: Buffer) -> bytes:
    """The bytes the compressibility test compresses: the whole of a small chunk, else
    ``SAMPLE_SLICES`` slices spread evenly over it."""
    size = len(data)
    if size <= SAMPLE_SLICE * SAMPLE_SLICES:
        return bytes(data)
    step = (size - SAMPLE_SLICE) // (SAMPLE_SLICES - 1)
    view = memoryview(data)
    return b"".join(view[i * step : i * step + SAMPLE_SLICE] for i in range(SAMPLE_SLICES))


def looks_compressible(data: Buffer) -> bool:
    """Whether zstd is worth running on ``data``, judged by compressing its sample."""
    probe = sample(data)
    if not probe:
        return False
    return len(_compressor().compress(probe)) <= INCOMPRESSIBLE_RATIO * len(probe)


def encode_chunk(data: Buffer) -> bytes:
    """The stored form of a chunk's plain bytes: zstd if it shrinks them, else raw."""
    if looks_compressible(data):
        blob: bytes = _compressor().compress(data)
        if len(blob) < len(data):
            return blob
    return RAW_MAGIC + data


def is_raw(blob: Buffer) -> bool:
    """Whether a stored chunk is in the raw form."""
    return bytes(blob[:4]) == RAW_MAGIC


def decode_chunk(chunk: str, blob: bytes) -> bytes:
    """A stored chunk's plain bytes, checked against its name ``chunk``; ``DataLoss`` if
    it is neither form, does not decompress, or its bytes do not match the name."""
    head = blob[:4]
    if head == RAW_MAGIC:
        data = blob[len(RAW_MAGIC) :]
    elif head == ZSTD_MAGIC:
        try:
            data = _decompressor().decompress(blob)
        except zstandard.ZstdError as exc:
            raise DataLoss(f"chunk {chunk} is corrupt: {exc}") from None
    else:
        raise DataLoss(f"chunk {chunk} is corrupt: not a stored chunk (first bytes {head.hex()})")
    if blake3.blake3(data).hexdigest() != chunk:
        raise DataLoss(f"chunk {chunk} is corrupt: its bytes do not match its name")
    return data


__all__ = [
    "RAW_MAGIC",
    "ZSTD_LEVEL",
    "decode_chunk",
    "encode_chunk",
    "is_raw",
    "looks_compressible",
]
