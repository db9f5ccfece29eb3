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

Speed (the bse-encoder decodes and re-encodes every touched user's table per batch): the
little-endian bit stream of a row is a sequence of little-endian uint32 half-words, so rows of
one width w <= 32 (all rows in practice) are packed and unpacked as half-words with one
constant index and shift per value position, vectorised over every row of that width across
all blobs of a batch (transposed chunks, a few numpy ops per position; no per-bit arrays, no
per-user Python loops); wider rows use uint64 words. Blobs are laid out in one buffer with
their row data 4-byte aligned, so rows are gathered and scattered as whole half-words. The
format is unchanged (tests compare against a plain bit-by-bit reference writer).
"""

from __future__ import annotations

import functools
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


# ---- bit packing ------------------------------------------------------------------------------
#
# The little-endian bit stream of a row is a sequence of little-endian uint32 half-words. Rows of
# one width w <= 32 (all rows in practice: ~13-17 bits at L = 10,000) are packed and unpacked in
# chunks of _CHUNK rows, transposed to (d, rows) so that each of the d value positions is one
# contiguous vector op with a constant half-word index and shift; chunks keep the temporaries in
# cache. Widths 33..64 (sums beyond 2**32: only with huge sequences) use 64-bit words.

_CHUNK = 4096


@functools.lru_cache(maxsize=256)
def _plan32(w: int, d: int):
    """Per value position: half-word index, shift, straddles into the next half-word; half-words per row."""
    bit = np.arange(d, dtype=np.int64) * w
    return (bit >> 5).tolist(), (bit & 31).tolist(), ((bit & 31) + w > 32).tolist(), (w * d + 31) // 32


def _pack32(rows: np.ndarray, w: int) -> np.ndarray:
    """(c, d) ints within the w-bit (w <= 32) two's-complement range -> (c, nh) uint32 half-words."""
    return _pack32T(rows.T.astype(np.uint32, order="C"), w).T


def _pack32T(u: np.ndarray, w: int) -> np.ndarray:
    """(d, c) uint32 (the low 32 bits of the values, two's complement; modified in place) ->
    (nh, c) uint32 half-words."""
    d, c = u.shape
    hw, sh, st, nh = _plan32(w, d)
    if w < 32:
        u &= np.uint32((1 << w) - 1)
    out = np.zeros((nh, c), dtype=np.uint32)
    for p in range(d):
        if sh[p]:
            out[hw[p]] |= u[p] << np.uint32(sh[p])
            if st[p]:
                out[hw[p] + 1] |= u[p] >> np.uint32(32 - sh[p])
        else:
            out[hw[p]] |= u[p]
    return out


def _unpack32(half: np.ndarray, d: int, w: int, dtype=np.int64) -> np.ndarray:
    """(c, nh) uint32 half-words -> (c, d) int32 view, sign-extended from w (<= 32) bits."""
    return _unpack32T(np.ascontiguousarray(half.T), d, w).T


def _unpack32T(h: np.ndarray, d: int, w: int) -> np.ndarray:
    """(nh, c) uint32 half-words -> (d, c) int32, sign-extended from w (<= 32) bits."""
    hw, sh, st, nh = _plan32(w, d)
    v = np.empty((d, h.shape[1]), dtype=np.uint32)
    for p in range(d):
        if sh[p]:
            np.right_shift(h[hw[p]], np.uint32(sh[p]), out=v[p])
            if st[p]:
                v[p] |= h[hw[p] + 1] << np.uint32(32 - sh[p])
        else:
            v[p] = h[hw[p]]
    if w < 32:
        v <<= np.uint32(32 - w)
    s = v.view(np.int32)
    if w < 32:
        s >>= 32 - w  # arithmetic shift: sign extension
    return s


@functools.lru_cache(maxsize=256)
def _plan(w: int, d: int):
    """64-bit words: words and bytes per row; per value its word index and shift; the values
    straddling into the next word, that word and the right shift of their high part."""
    bit = np.arange(d, dtype=np.int64) * w
    nw, nb = (w * d + 63) // 64, (w * d + 7) // 8
    wi = bit >> 6
    sh = (bit & 63).astype(np.uint64)
    st = np.flatnonzero((bit & 63) + w > 64)
    return nw, nb, wi, sh, st, wi[st] + 1, (64 - (bit[st] & 63)).astype(np.uint64)


def _pack_words(rows: np.ndarray, w: int) -> np.ndarray:
    """(k, d) int64 within the w-bit two's-complement range -> (k, nw) uint64 words."""
    k, d = rows.shape
    nw, _, wi, sh, st, st_word, st_shift = _plan(w, d)
    u = np.ascontiguousarray(rows, dtype=np.int64).view(np.uint64)
    if w < 64:
        u = u & np.uint64((1 << w) - 1)
    lo = u << sh  # bits beyond the word drop out
    words = np.zeros((k, nw), dtype=np.uint64)
    for p in range(d):  # values sharing a word have disjoint bits
        words[:, wi[p]] |= lo[:, p]
    for s, wd, ss in zip(st, st_word, st_shift):
        words[:, wd] |= u[:, s] >> ss
    return words


def _unpack_words(words: np.ndarray, d: int, w: int) -> np.ndarray:
    """(k, nw) uint64 -> (k, d) int64, sign-extended from w bits."""
    _, _, wi, sh, st, st_word, st_shift = _plan(w, d)
    lo = words[:, wi] >> sh  # (k, d)
    if len(st):
        lo[:, st] |= words[:, st_word] << st_shift
    if w < 64:
        lo <<= np.uint64(64 - w)
        v = lo.view(np.int64)
        v >>= 64 - w  # arithmetic shift: sign extension
        return v
    return lo.view(np.int64)


def _pack_rows(rows: np.ndarray, w: int) -> np.ndarray:
    """(k, d) ints with |v| < 2**(w-1) -> (k, ceil(d*w/8)) uint8, w-bit two's complement."""
    nb = (w * rows.shape[1] + 7) // 8
    if w <= 32:
        half = np.ascontiguousarray(_pack32(rows, w), dtype="<u4")
        return half.view(np.uint8)[:, :nb]
    return np.ascontiguousarray(_pack_words(rows, w), dtype="<u8").view(np.uint8)[:, :nb]


def _unpack_rows(packed: np.ndarray, d: int, w: int, dtype=np.int64) -> np.ndarray:
    """(k, nbytes) uint8 -> (k, d) `dtype`, sign-extended from w bits."""
    unit = 4 if w <= 32 else 8
    buf = np.zeros((packed.shape[0], -(-packed.shape[1] // unit) * unit), dtype=np.uint8)
    buf[:, : packed.shape[1]] = packed
    if w <= 32:
        return _unpack32(buf.view("<u4"), d, w).astype(dtype)
    return _unpack_words(buf.view("<u8"), d, w).astype(dtype, copy=False)


def _widths(rows: np.ndarray) -> np.ndarray:
    """(..., d) int -> (...,) uint8 two's-complement bit widths (0 for all-zero rows): the bit
    length of max |v| plus a sign bit."""
    mag = np.maximum(rows.max(axis=-1).astype(np.int64), -rows.min(axis=-1).astype(np.int64))
    # bit_length(mag) + 1 sign bit; frexp gives the exponent exactly for ints < 2**53
    _, exp = np.frexp(mag.astype(np.float64))
    return np.where(mag == 0, 0, exp + 1).astype(np.uint8)


def _row_io(dim: int, w: int):
    """(units per row, numpy unit dtype, bytes per row) of a w-bit row."""
    if w <= 32:
        return (w * dim + 31) // 32, np.dtype("<u4"), (w * dim + 7) // 8
    return (w * dim + 63) // 64, np.dtype("<u8"), (w * dim + 7) // 8


def _store_rows(buf: np.ndarray, off: np.ndarray, flat_rows: np.ndarray, sel: np.ndarray, w: int) -> None:
    """Pack the rows flat_rows[sel] (each (d,)) at byte offsets `off` (len(sel),) of `buf` (uint8)."""
    dim = flat_rows.shape[1]
    n_units, unit, nb = _row_io(dim, w)
    whole = n_units * unit.itemsize == nb
    cols = flat_rows.T  # (d, N) view: gathering columns yields (d, c) C-contiguous
    for c0 in range(0, len(sel), _CHUNK):
        part, o = sel[c0 : c0 + _CHUNK], off[c0 : c0 + _CHUNK]
        if w <= 32:
            u = cols[:, part]
            u = u.view(np.uint32) if u.dtype == np.int32 else u.astype(np.uint32)
            packed = _pack32T(u, w)  # (n_units, c)
            if whole and not (o % 4).any():
                view = buf[: buf.size // 4 * 4].view(unit)
                view[(o // 4)[None, :] + np.arange(n_units)[:, None]] = packed
                continue
            packed = packed.T
        else:
            packed = _pack_words(flat_rows[part], w)  # (c, n_units)
        b = np.ascontiguousarray(packed, dtype=unit).view(np.uint8)[:, :nb]
        buf[o[:, None] + np.arange(nb)] = b


def _load_rows(data: np.ndarray, off: np.ndarray, dim: int, w: int, out: np.ndarray, dest: np.ndarray) -> None:
    """Unpack the w-bit rows at byte offsets `off` of `data` into out[dest]."""
    n_units, unit, nb = _row_io(dim, w)
    whole = n_units * unit.itemsize == nb
    view = data[: data.size // unit.itemsize * unit.itemsize].view(unit)
    for c0 in range(0, len(off), _CHUNK):
        o, dst = off[c0 : c0 + _CHUNK], dest[c0 : c0 + _CHUNK]
        if whole and not (o % unit.itemsize).any():
            if w <= 32:
                packedT = np.take(view, (o // 4)[None, :] + np.arange(n_units)[:, None])  # (n_units, c)
                out[dst] = _unpack32T(packedT, dim, w).T
                continue
            packed = np.take(view, (o // unit.itemsize)[:, None] + np.arange(n_units))
        else:
            raw = np.zeros((len(o), n_units * unit.itemsize), dtype=np.uint8)
            raw[:, :nb] = data[o[:, None] + np.arange(nb)]
            packed = raw.view(unit)
        if w <= 32:
            out[dst] = _unpack32(packed, dim, w)
        else:
            out[dst] = _unpack_words(packed, dim, w)


def _width_groups(flat_w: np.ndarray):
    """(width, row indices) for each non-zero width present."""
    order = np.argsort(flat_w.astype(np.uint8), kind="stable")  # radix sort (widths <= 64)
    bounds = np.flatnonzero(np.diff(flat_w[order])) + 1
    for sel in np.split(order, bounds):
        if len(sel) and flat_w[sel[0]] != 0:
            yield int(flat_w[sel[0]]), sel


# ---- tables <-> blobs ------------------------------------------------------------------------


def encode_many(tables: np.ndarray) -> list[bytes]:
    """Encode U exact integer tables.

    Args:
        tables: (U, S, B, d) int32 or int64 bucket sums; each signature's buckets must sum to
            the same total.
    Returns:
        U blobs.
    """
    n_users, n_sig, n_buckets, dim = tables.shape
    if n_users == 0:
        return []
    if tables.dtype not in (np.int32, np.int64):
        tables = tables.astype(np.int64)
    n_rows = n_sig * n_buckets
    rows = np.ascontiguousarray(tables).reshape(n_users, n_rows, dim)  # (U, R, d)
    widths = _widths(rows).reshape(n_users, n_sig, n_buckets)  # (U, S, B)
    if int(widths.max(initial=0)) > 63:
        raise OverflowError("BSE bucket sum needs more than 63 bits")
    if n_sig > 1:
        # signatures 1..: drop the widest bucket, derived on decode as total - the others
        widest = widths[:, 1:].argmax(axis=2)  # (U, S-1)
        widths[:, 1:][np.arange(n_users)[:, None], np.arange(n_sig - 1)[None, :], widest] = _DERIVED
    widths = widths.reshape(n_users, n_rows)  # (U, R)
    stored_w = np.where(widths == _DERIVED, 0, widths).astype(np.int64)
    row_nbytes = (stored_w * dim + 7) // 8  # (U, R)
    meta = _HEADER.size + n_rows
    sizes = meta + row_nbytes.sum(axis=1)  # (U,) blob lengths
    # blob i at pos[i], its row data (pos + meta) 4-byte aligned: regions start at multiples of 4
    pad = (-meta) % 4
    region = (pad + sizes + 3) // 4 * 4
    pos = np.concatenate([[0], np.cumsum(region[:-1])]) + pad
    buf = np.zeros(int(region.sum()) + 8, dtype=np.uint8)
    head = np.frombuffer(_HEADER.pack(_FORMAT, n_sig, n_buckets, dim), dtype=np.uint8)
    buf[pos[:, None] + np.arange(_HEADER.size)] = head
    buf[pos[:, None] + _HEADER.size + np.arange(n_rows)] = widths
    row_off = (pos + meta)[:, None] + np.cumsum(row_nbytes, axis=1) - row_nbytes  # (U, R) absolute
    flat_w, flat_off = stored_w.ravel(), row_off.ravel()
    flat_rows = rows.reshape(-1, dim)
    for w, sel in _width_groups(flat_w):
        _store_rows(buf, flat_off[sel], flat_rows, sel, w)
    mv = memoryview(buf)
    return [bytes(mv[p : p + n]) for p, n in zip(pos.tolist(), sizes.tolist())]


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
    if len(blob) < _HEADER.size + n_sig * n_buckets:
        raise ValueError(f"blob of {len(blob)} bytes is shorter than its {n_sig * n_buckets} row widths")
    return decode_many([blob], (n_sig, n_buckets, dim))[0]


def decode_many(blobs: list[bytes], shape: tuple[int, int, int], dtype=np.int64) -> np.ndarray:
    """Decode U blobs of one shape at once (the apply path): rows of equal width across all
    blobs are unpacked together.

    Args:
        blobs: U blobs from `encode`/`encode_many`.
        shape: (S, B, d) they must all have.
        dtype: np.int64, or np.int32 when the caller knows every bucket sum and every partial
            sum of a signature fits in 31 bits (the store checks its sequence bound); a blob
            with a row wider than 32 bits is then still decoded, as int64.
    Returns:
        (U, S, B, d) of `dtype` (or int64, see above).
    Raises:
        ValueError: naming the index of the first malformed blob.
    """
    n_sig, n_buckets, dim = shape
    n_rows = n_sig * n_buckets
    n_users = len(blobs)
    if not blobs:
        return np.zeros((0, *shape), dtype=dtype)
    meta = _HEADER.size + n_rows
    head = _HEADER.pack(_FORMAT, n_sig, n_buckets, dim)
    pad = (-meta) % 4
    pieces, starts, pos, zeros = [], [], 0, b"\0" * 8
    for i, b in enumerate(blobs):
        if len(b) < meta or b[: _HEADER.size] != head:
            if len(blobs) == 1:
                _check_header(b, shape)
            raise ValueError(f"blob {i} has a bad header or is shorter than its {n_rows} row widths")
        fill = pad + (-(len(b) + pad)) % 4  # each blob's row data 4-byte aligned
        pieces += [b, zeros[: (-(len(b) + pad)) % 4 + pad]]
        starts.append(pos)
        pos += len(b) + fill
    data = np.frombuffer(zeros[:pad] + b"".join(pieces) + zeros, dtype=np.uint8)
    start = np.asarray(starts, dtype=np.int64) + pad
    widths = data[(start + _HEADER.size)[:, None] + np.arange(n_rows)].astype(np.int64)  # (U, R)
    derived = widths == _DERIVED
    bad = derived.reshape(n_users, n_sig, n_buckets)
    ok = ~bad[:, 0].any(axis=1)
    if n_sig > 1:
        ok &= (bad[:, 1:].sum(axis=2) == 1).all(axis=1)
    if not ok.all():
        raise ValueError(f"blob {int(np.flatnonzero(~ok)[0])}: derived-bucket markers are not one per signature 1..S-1")
    stored_w = np.where(derived, 0, widths)
    if (stored_w > 64).any():
        raise ValueError(f"blob {int(np.flatnonzero((stored_w > 64).any(1))[0])}: row width above 64")
    row_nbytes = (stored_w * dim + 7) // 8  # (U, R)
    sizes = np.fromiter((len(b) for b in blobs), dtype=np.int64, count=n_users)
    need = meta + row_nbytes.sum(axis=1)
    if (need != sizes).any():
        bad_i = int(np.flatnonzero(need != sizes)[0])
        raise ValueError(f"blob {bad_i} has {sizes[bad_i]} bytes, its row widths need {int(need[bad_i])}")
    row_off = (start + meta)[:, None] + np.cumsum(row_nbytes, axis=1) - row_nbytes  # (U, R) absolute
    if np.dtype(dtype) != np.int64 and int(stored_w.max()) > 32:
        dtype = np.int64
    flat_w, flat_off = stored_w.ravel(), row_off.ravel()
    out = np.empty((n_users * n_rows, dim), dtype=dtype)
    out[flat_w == 0] = 0  # empty and derived rows
    for w, sel in _width_groups(flat_w):
        _load_rows(data, flat_off[sel], dim, w, out, sel)
    tables = out.reshape(n_users, n_sig, n_buckets, dim)
    if n_sig > 1:
        u, j, b = np.nonzero(derived.reshape(n_users, n_sig, n_buckets))
        sums = tables.sum(axis=2, dtype=np.int64)  # (U, S, d); derived rows are still 0
        tables[u, j, b] = sums[u, 0] - sums[u, j]
    return tables


def _check_header(blob: bytes, shape: tuple[int, int, int]) -> None:
    """Raise ValueError with the precise reason a single blob's header is unusable."""
    if len(blob) < _HEADER.size:
        raise ValueError(f"blob of {len(blob)} bytes is shorter than its header")
    fmt, n_sig, n_buckets, dim = _HEADER.unpack_from(blob)
    if fmt != _FORMAT:
        raise ValueError(f"unknown table format {fmt}")
    if (n_sig, n_buckets, dim) != tuple(shape):
        raise ValueError(f"table shape {(n_sig, n_buckets, dim)} != expected {tuple(shape)}")
    raise ValueError(f"blob of {len(blob)} bytes is shorter than its {n_sig * n_buckets} row widths")
