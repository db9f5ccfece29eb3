"""Compact, exact encoding of SDIM bucket-sum tables.

Why this representation (the size goal is <= 16 KB of Redis memory per user and version at
L = 10,000 behaviours; a float32 table of 16 x 8 x 64 is 32 KB):

* Item embeddings are quantised to signed `item_bits`-bit integers with one fixed step per
  table version (step = max|e| / (2**(item_bits-1) - 1), from the version's embedding table).
  The quantisation is a deterministic function of the item, so adding a behaviour and later
  subtracting it on eviction cancels exactly.
* Bucket sums are kept as exact integers. Integer add/subtract is associative, so the table
  after any number of add/evict cycles is bit-identical to a recomputation from the stored
  sequence: zero drift by construction. (float16 sums were measured and rejected: each update
  rounds the running sum to 11 bits, and the error random-walks with the number of updates.)
  The only error against a float64 naive computation is the fixed per-item quantisation error,
  which averages out in large buckets and does not grow over time.
* Every signature's buckets partition the same sequence, so each signature's buckets sum to the
  same total. Signature 0 is stored in full; for signatures 1.. the widest bucket is dropped
  and derived exactly as total - sum(other buckets): 8 + 15 x 7 = 113 stored rows, not 128.
* Each stored row is bit-packed two's complement at the width its largest |value| needs (one
  width byte per row; 0 = all-zero row, 255 = derived row). An all-zero sum marks an empty
  bucket, so no counts are stored.

Blob layout: header `<BHIH` (format, n_signatures, n_buckets, dim), uint8 widths (S*B,), then
the stored rows' packed bits in row order (each ceil(w*d/8) bytes, little-endian bit order).
At L = 10,000 and d = 64 a row needs ~13-17 bits per value, ~14 KB per table, which with
Redis' string header fits jemalloc's 14,336-byte size class (the next is 16,384 + key: >16 KB).
"""

from __future__ import annotations

import struct

import numpy as np

_FORMAT = 1
_HEADER = struct.Struct("<BHIH")  # format, n_signatures, n_buckets, dim
_DERIVED = 255  # width marker of the one dropped (derived) bucket per signature 1..S-1


def quant_step(max_abs: float, item_bits: int) -> float:
    """Quantisation step that maps [-max_abs, max_abs] onto signed `item_bits`-bit integers."""
    if not 2 <= item_bits <= 16:
        raise ValueError(f"item_bits ({item_bits}) must be in [2, 16]")
    if not np.isfinite(max_abs) or max_abs <= 0:
        raise ValueError(f"max_abs ({max_abs}) must be a positive finite float")
    return float(max_abs) / float(2 ** (item_bits - 1) - 1)


def quantize(emb: np.ndarray, step: float, item_bits: int) -> np.ndarray:
    """(n, d) float -> (n, d) int64, clipped to the signed `item_bits` range."""
    lim = 2 ** (item_bits - 1) - 1
    return np.clip(np.rint(emb.astype(np.float64) / step), -lim, lim).astype(np.int64)


# Bit packing works on the little-endian bytes of each int64 (np.unpackbits/packbits are C
# loops over uint8), never on one int64 per bit: ~50x faster than shifting int64 arrays.


def _pack_rows(rows: np.ndarray, w: int) -> np.ndarray:
    """(k, d) int64 with |v| < 2**(w-1) -> (k, ceil(d*w/8)) uint8, w-bit two's complement."""
    k, d = rows.shape
    nb = (w + 7) // 8
    le = np.ascontiguousarray(rows.astype("<i8")).view(np.uint8).reshape(k, d, 8)[:, :, :nb]  # (k, d, nb)
    bits = np.unpackbits(le, axis=2, bitorder="little")[:, :, :w]  # (k, d, w) low bits, sign at w-1
    return np.packbits(bits.reshape(k, d * w), axis=1, bitorder="little")


def _unpack_rows(packed: np.ndarray, d: int, w: int) -> np.ndarray:
    """(k, nbytes) uint8 -> (k, d) int64, sign-extended from w bits."""
    k = packed.shape[0]
    nb = (w + 7) // 8
    bits = np.unpackbits(packed, axis=1, bitorder="little")[:, : d * w].reshape(k, d, w)  # (k, d, w)
    if nb * 8 > w:
        bits = np.concatenate([bits, np.zeros((k, d, nb * 8 - w), np.uint8)], axis=2)  # (k, d, 8*nb)
    le = np.zeros((k, d, 8), dtype=np.uint8)
    le[:, :, :nb] = np.packbits(bits, axis=2, bitorder="little")  # (k, d, nb) low bytes
    u = le.view("<i8").reshape(k, d).astype(np.int64)
    return np.where(u >= (1 << (w - 1)), u - (1 << w), u)  # sign-extend from w bits


def _widths(rows: np.ndarray) -> np.ndarray:
    """(..., d) int64 -> (...,) uint8 two's-complement bit widths (0 for all-zero rows)."""
    mag = np.abs(rows).max(axis=-1)  # (...,)
    # bit_length(mag) + 1 sign bit; frexp gives the exponent exactly for ints < 2**53
    _, exp = np.frexp(mag.astype(np.float64))
    return np.where(mag == 0, 0, exp + 1).astype(np.uint8)


def encode_many(tables: np.ndarray) -> list[bytes]:
    """Encode U exact integer tables.

    Args:
        tables: (U, S, B, d) int64 bucket sums; each signature's buckets must sum to the same total.
    Returns:
        U blobs.
    """
    n_users, n_sig, n_buckets, dim = tables.shape
    if n_users == 0:
        return []
    rows = tables.reshape(n_users, n_sig * n_buckets, dim)  # (U, R, d)
    widths = _widths(rows).reshape(n_users, n_sig, n_buckets)  # (U, S, B)
    if int(widths.max(initial=0)) > 63:
        raise OverflowError("BSE bucket sum needs more than 63 bits")
    if n_sig > 1:
        # signatures 1..: drop the widest bucket, derived on decode as total - the others
        widest = widths[:, 1:].argmax(axis=2)  # (U, S-1)
        u_idx, j_idx = np.meshgrid(np.arange(n_users), np.arange(1, n_sig), indexing="ij")
        widths[u_idx, j_idx, widest] = _DERIVED
    widths = widths.reshape(n_users, -1)  # (U, R)
    stored_w = np.where(widths == _DERIVED, 0, widths).astype(np.int64)
    row_nbytes = (stored_w * dim + 7) // 8  # (U, R)
    flat_off = np.concatenate([[0], np.cumsum(row_nbytes.ravel())])  # (U*R + 1,)
    buf = np.zeros(int(flat_off[-1]), dtype=np.uint8)
    flat_rows = rows.reshape(-1, dim)
    flat_w = stored_w.ravel()
    for w in np.unique(flat_w):
        if w == 0:
            continue
        sel = np.flatnonzero(flat_w == w)
        packed = _pack_rows(flat_rows[sel], int(w))  # (k, nbytes)
        buf[flat_off[sel][:, None] + np.arange(packed.shape[1])] = packed
    header = _HEADER.pack(_FORMAT, n_sig, n_buckets, dim)
    n_rows = n_sig * n_buckets
    out = []
    for u_i in range(n_users):
        lo, hi = flat_off[u_i * n_rows], flat_off[(u_i + 1) * n_rows]
        out.append(header + widths[u_i].tobytes() + buf[lo:hi].tobytes())
    return out


def encode(table: np.ndarray) -> bytes:
    """(S, B, d) int64 -> blob."""
    return encode_many(table[None])[0]


def decode(blob: bytes, shape: tuple[int, int, int] | None = None) -> np.ndarray:
    """Blob -> (S, B, d) int64 exact bucket sums.

    Args:
        blob: bytes from `encode`.
        shape: expected (S, B, d); checked when given.
    Raises:
        ValueError: the blob is truncated or of another shape/format.
    """
    if len(blob) < _HEADER.size:
        raise ValueError(f"blob of {len(blob)} bytes is shorter than its header")
    fmt, n_sig, n_buckets, dim = _HEADER.unpack_from(blob)
    if fmt != _FORMAT:
        raise ValueError(f"unknown table format {fmt}")
    if shape is not None and (n_sig, n_buckets, dim) != tuple(shape):
        raise ValueError(f"table shape {(n_sig, n_buckets, dim)} != expected {tuple(shape)}")
    n_rows = n_sig * n_buckets
    pos = _HEADER.size
    if len(blob) < pos + n_rows:
        raise ValueError(f"blob of {len(blob)} bytes is shorter than its {n_rows} row widths")
    widths = np.frombuffer(blob, dtype=np.uint8, count=n_rows, offset=pos).astype(np.int64)
    derived = widths.reshape(n_sig, n_buckets) == _DERIVED  # (S, B)
    if derived[0].any() or (n_sig > 1 and not (derived[1:].sum(1) == 1).all()):
        raise ValueError("derived-bucket markers are not one per signature 1..S-1")
    widths = np.where(widths == _DERIVED, 0, widths)
    pos += n_rows
    row_nbytes = (widths * dim + 7) // 8
    off = pos + np.concatenate([[0], np.cumsum(row_nbytes)])
    if off[-1] != len(blob):
        raise ValueError(f"blob has {len(blob)} bytes, its row widths need {int(off[-1])}")
    data = np.frombuffer(blob, dtype=np.uint8)
    rows = np.zeros((n_rows, dim), dtype=np.int64)
    for w in np.unique(widths):
        if w == 0:
            continue
        sel = np.flatnonzero(widths == w)
        nb = int(row_nbytes[sel[0]])
        packed = data[off[sel][:, None] + np.arange(nb)]  # (k, nb)
        rows[sel] = _unpack_rows(packed, dim, int(w))
    table = rows.reshape(n_sig, n_buckets, dim)
    total = table[0].sum(0)  # (d,) every signature's buckets sum to this
    j, b = np.nonzero(derived)
    table[j, b] = total - table[j].sum(1)  # derived rows are zero so far
    return table


def decode_many(blobs: list[bytes], shape: tuple[int, int, int]) -> np.ndarray:
    """Decode U blobs of one shape at once (the apply path): rows of equal width across all
    blobs are unpacked together.

    Args:
        blobs: U blobs from `encode`/`encode_many`.
        shape: (S, B, d) they must all have.
    Returns:
        (U, S, B, d) int64.
    Raises:
        ValueError: naming the index of the first malformed blob.
    """
    n_sig, n_buckets, dim = shape
    n_rows = n_sig * n_buckets
    out = np.zeros((len(blobs), n_rows, dim), dtype=np.int64)
    if not blobs:
        return out.reshape(0, *shape)
    head = _HEADER.pack(_FORMAT, n_sig, n_buckets, dim)
    widths = np.zeros((len(blobs), n_rows), dtype=np.int64)
    for i, b in enumerate(blobs):
        if b[: _HEADER.size] != head or len(b) < _HEADER.size + n_rows:
            decode(b, shape)  # raises the precise reason
            raise ValueError(f"blob {i} has a bad header")
        widths[i] = np.frombuffer(b, dtype=np.uint8, count=n_rows, offset=_HEADER.size)
    derived = widths == _DERIVED  # (U, R)
    stored_w = np.where(derived, 0, widths)
    row_nbytes = (stored_w * dim + 7) // 8  # (U, R)
    base = np.cumsum([0] + [len(b) for b in blobs[:-1]]) + _HEADER.size + n_rows  # data start per blob
    row_off = base[:, None] + np.cumsum(row_nbytes, axis=1) - row_nbytes  # (U, R)
    ends = row_off[:, -1] + row_nbytes[:, -1]
    sizes = np.array([len(b) for b in blobs])
    if (ends - base != sizes - _HEADER.size - n_rows).any():
        bad = int(np.flatnonzero(ends - base != sizes - _HEADER.size - n_rows)[0])
        raise ValueError(f"blob {bad} has {sizes[bad]} bytes, its row widths need more or fewer")
    data = np.frombuffer(b"".join(blobs), dtype=np.uint8)
    flat_w, flat_off = stored_w.ravel(), row_off.ravel()
    flat_out = out.reshape(-1, dim)
    for w in np.unique(flat_w):
        if w == 0:
            continue
        sel = np.flatnonzero(flat_w == w)
        nb = (int(w) * dim + 7) // 8
        flat_out[sel] = _unpack_rows(data[flat_off[sel][:, None] + np.arange(nb)], dim, int(w))
    tables = out.reshape(len(blobs), n_sig, n_buckets, dim)
    der = derived.reshape(len(blobs), n_sig, n_buckets)
    total = tables[:, 0].sum(1)  # (U, d)
    u, j, b = np.nonzero(der)
    tables[u, j, b] = total[u] - tables[u, j].sum(1)
    return tables
