"""COCO run-length encoding of masks, as SA-1B's annotation files store them."""

from __future__ import annotations

import numpy as np


def rle_to_mask(rle: dict) -> np.ndarray:
    """Decode a COCO run-length encoding (compressed string or list counts) to an (h, w) bool mask."""
    h, w = rle["size"]
    counts = rle["counts"]
    if isinstance(counts, str):  # COCO's compact string form: 5-bit groups, continuation bit 0x20
        values, i, raw = [], 0, counts.encode()
        while i < len(raw):
            x, k, more = 0, 0, True
            while more:
                c = raw[i] - 48
                x |= (c & 0x1F) << (5 * k)
                more = bool(c & 0x20)
                i += 1
                k += 1
                if not more and (c & 0x10):
                    x |= -1 << (5 * k)
            if len(values) > 2:
                x += values[-2]
            values.append(x)
        counts = values
    flat = np.zeros(h * w, dtype=bool)
    pos, val = 0, False
    for n in counts:
        flat[pos:pos + n] = val
        pos += n
        val = not val
    return flat.reshape(w, h).T  # column-major


def mask_to_rle(mask: np.ndarray) -> dict:
    """Encode an (h, w) bool mask as COCO's compressed RLE (``{"size": [h, w], "counts": str}``)."""
    h, w = mask.shape
    flat = np.asarray(mask, dtype=bool).T.reshape(-1)  # column-major
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts  # runs start with zeros
    chars = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            chars.append(chr(c + 48))
    return {"size": [int(h), int(w)], "counts": "".join(chars)}
