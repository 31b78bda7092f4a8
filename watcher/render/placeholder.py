"""A tiny placeholder per rendered photo (output.placeholder: thumbhash | blurhash | none), made in
the worker from the smallest thumbnail just written, for the "rendered" event.

ThumbHash (https://evanw.github.io/thumbhash/) is written here, from the published algorithm: the
two packages on PyPI (thumbhash 0.1.2, thumbhash-python 1.0.1) are pure Python like this, have had
no release since 2023, and thumbhash 0.1.2 mis-encodes every image with transparency (an
operator-precedence slip in its alpha line). Ours is a separable DCT on at most 32 px a side:
1.2 ms a photo (thumbhash 0.1.2: 1.7 ms, thumbhash-python: 2.5 ms, same input).

BlurHash comes from the `blurhash` package (pure Python, no dependencies, released 2025), imported
only when configured (pip install 'thumbwatch[blurhash]'): 1.1 ms on 20 px a side, plenty for
its 4×3 components. blurhash-python is faster (C, 0.3 ms) but unreleased since January 2024 and
built on Image.getdata(), which Pillow 13 deprecates and Pillow 14 removes.
"""

from __future__ import annotations

import base64
import logging
import math
from typing import Any

from PIL import Image

logger = logging.getLogger(__name__)

KINDS = ("thumbhash", "blurhash")
SIDE = 32  # pixels a side, at most, that a placeholder is computed from: it keeps only low frequencies
BLURHASH_SIDE = 20  # its 4x3 components need no more; its pure-Python encoder costs per pixel


def of(result: Any, output: Any) -> dict | None:
    """{"kind": ..., "hash": ...} for a render.RenderResult, or None (not asked for, or it could
    not be made: a placeholder never fails a photo)."""
    kind = getattr(output, "placeholder", "none")
    if kind not in KINDS or not result.outputs:
        return None
    path = min(result.outputs, key=lambda o: o[1] * o[2])[0]
    try:
        with Image.open(path) as im:
            im.draft("RGB", (SIDE, SIDE))
            alpha = "A" in im.getbands() or "transparency" in im.info
            small = im.convert("RGBA" if alpha else "RGB")
        small.thumbnail((SIDE, SIDE))
        return {"kind": kind, "hash": thumbhash(small) if kind == "thumbhash" else blurhash(small)}
    except (OSError, ValueError, TypeError, ImportError) as err:
        logger.warning("no %s placeholder for %s: %s", kind, path, err)
        return None


def blurhash(im: Image.Image) -> str:
    import blurhash as library  # the `blurhash` package (halcy's), rows of [r, g, b] lists

    small = im.convert("RGB")
    small.thumbnail((BLURHASH_SIDE, BLURHASH_SIDE))
    w, h = small.size
    px = small.tobytes()
    rows = [[list(px[i:i + 3]) for i in range(y * w * 3, (y + 1) * w * 3, 3)] for y in range(h)]
    x, y = (4, 3) if w >= h else (3, 4)
    return library.encode(rows, x, y)


def thumbhash(im: Image.Image) -> str:
    """The ThumbHash of an image of at most 100×100 pixels, base64 (as the reference shows it)."""
    return base64.b64encode(bytes(thumbhash_bytes(im))).decode("ascii")


def thumbhash_bytes(im: Image.Image) -> list[int]:
    w, h = im.size
    if w > 100 or h > 100:
        raise ValueError(f"{w}x{h} does not fit in 100x100")
    rgba = im.convert("RGBA").tobytes()
    n = w * h
    alphas = [rgba[i * 4 + 3] / 255 for i in range(n)]
    total_a = sum(alphas)
    avg = [sum(alphas[i] * rgba[i * 4 + c] / 255 for i in range(n)) / total_a if total_a else 0.0 for c in range(3)]
    has_alpha = total_a < n
    limit = 5 if has_alpha else 7
    lx = max(1, _round(limit * w / max(w, h)))
    ly = max(1, _round(limit * h / max(w, h)))
    lum, p, q = [], [], []
    for i in range(n):
        a = alphas[i]
        r, g, b = (avg[c] * (1 - a) + a / 255 * rgba[i * 4 + c] for c in range(3))  # composited on the average
        lum.append((r + g + b) / 3)
        p.append((r + g) / 2 - b)
        q.append(r - g)

    l_dc, l_ac, l_scale = _channel(lum, w, h, max(3, lx), max(3, ly))
    p_dc, p_ac, p_scale = _channel(p, w, h, 3, 3)
    q_dc, q_ac, q_scale = _channel(q, w, h, 3, 3)
    a_dc, a_ac, a_scale = _channel(alphas, w, h, 5, 5) if has_alpha else (1.0, [], 1.0)

    landscape = w > h
    header24 = (_round(63 * l_dc) | (_round(31.5 + 31.5 * p_dc) << 6) | (_round(31.5 + 31.5 * q_dc) << 12)
                | (_round(31 * l_scale) << 18) | (int(has_alpha) << 23))
    header16 = (ly if landscape else lx) | (_round(63 * p_scale) << 3) | (_round(63 * q_scale) << 9) | (int(landscape) << 15)
    out = [header24 & 255, (header24 >> 8) & 255, header24 >> 16, header16 & 255, header16 >> 8]
    if has_alpha:
        out.append(_round(15 * a_dc) | (_round(15 * a_scale) << 4))
    odd = False
    for f in l_ac + p_ac + q_ac + a_ac:  # two 4-bit values a byte, low nibble first
        u = _round(15 * f)
        if odd:
            out[-1] |= u << 4
        else:
            out.append(u)
        odd = not odd
    return out


def _channel(values: list[float], w: int, h: int, nx: int, ny: int) -> tuple[float, list[float], float]:
    """DC, AC (scaled to 0..1) and scale of the DCT coefficients kept: cx * ny < nx * (ny - cy)."""
    fx = [[math.cos(math.pi / w * cx * (x + 0.5)) for x in range(w)] for cx in range(nx)]
    fy = [[math.cos(math.pi / h * cy * (y + 0.5)) for y in range(h)] for cy in range(ny)]
    rows = [[sum(cos * v for cos, v in zip(fx[cx], values[y * w:(y + 1) * w])) for y in range(h)] for cx in range(nx)]
    dc, ac, scale = 0.0, [], 0.0
    for cy in range(ny):
        cx = 0
        while cx * ny < nx * (ny - cy):
            f = sum(a * b for a, b in zip(fy[cy], rows[cx])) / (w * h)
            if cx or cy:
                ac.append(f)
                scale = max(scale, abs(f))
            else:
                dc = f
            cx += 1
    if scale:
        ac = [0.5 + 0.5 / scale * f for f in ac]
    return dc, ac, scale


def _round(x: float) -> int:
    return math.floor(x + 0.5)  # JavaScript's Math.round, as the reference encoder uses
