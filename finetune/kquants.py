"""Q4_K and Q6_K quantizers in numpy (the `gguf` package only dequantizes these two).

    quantize_q4_k(rows)  -> uint8 array, 144 bytes per 256 values (llama.cpp's block_q4_K)
    quantize_q6_k(rows)  -> uint8 array, 210 bytes per 256 values (llama.cpp's block_q6_K)

The logic follows llama.cpp's reference quantizers (quantize_row_q4_K_ref with make_qkx2_quants,
quantize_row_q6_K_ref with make_qx_quants), vectorised over all blocks at once; the byte layout is
the one gguf's own `dequantize_blocks` reads, which is how tests/test_export.py checks it.
"""

from __future__ import annotations

QK_K = 256


def _rint(x):
    import numpy as np

    return np.rint(x).astype(np.int32)  # nearest_int; ties to even are as rare here as in llama.cpp


def _blocks(rows, what: str):
    import numpy as np

    a = np.asarray(rows, dtype=np.float32)
    if a.shape[-1] % QK_K:
        raise ValueError(f"{what}: the row size {a.shape[-1]} is not a multiple of {QK_K}")
    return a.reshape(-1, QK_K), a.shape[:-1] + (a.shape[-1] // QK_K,)


def _fit_min_scale(x, w, nmax: int, nstep: int = 20, rmin: float = -1.0, rdelta: float = 0.1):
    """make_qkx2_quants over the last axis: x ~ scale * L - minv, L in [0, nmax]; returns (scale, minv)."""
    import numpy as np

    lo = np.minimum(x.min(-1), 0.0)
    hi = x.max(-1)
    span = hi - lo
    flat = span <= 0
    span = np.where(flat, 1.0, span)

    def fit(iscale):
        L = np.clip(_rint(iscale[..., None] * (x - lo[..., None])), 0, nmax).astype(np.float32)
        sw, sl, sl2 = w.sum(-1), (w * L).sum(-1), (w * L * L).sum(-1)
        sxl, sx = (w * L * x).sum(-1), (w * x).sum(-1)
        D = sw * sl2 - sl * sl
        ok = D > 0
        Ds = np.where(ok, D, 1.0)
        scale = (sw * sxl - sx * sl) / Ds
        mn = (sl2 * sx - sl * sxl) / Ds
        pos = mn > 0  # the offset may only lower values (min <= 0), as in llama.cpp
        scale = np.where(pos, sxl / np.where(sl2 > 0, sl2, 1.0), scale)
        mn = np.where(pos, 0.0, mn)
        err = (w * (scale[..., None] * L + mn[..., None] - x) ** 2).sum(-1)
        return ok, scale, mn, err

    scale0 = span / nmax
    L0 = np.clip(_rint((x - lo[..., None]) / scale0[..., None]), 0, nmax)
    best_err = (w * (scale0[..., None] * L0 + lo[..., None] - x) ** 2).sum(-1)
    best_scale, best_min = scale0, lo
    for i in range(nstep + 1):
        ok, scale, mn, err = fit((rmin + rdelta * i + nmax) / span)
        better = ok & (err < best_err)
        best_err = np.where(better, err, best_err)
        best_scale = np.where(better, scale, best_scale)
        best_min = np.where(better, mn, best_min)
    best_scale = np.where(flat, 0.0, best_scale)
    best_min = np.where(flat, lo, best_min)
    return best_scale.astype(np.float32), (-best_min).astype(np.float32)


def quantize_q4_k(rows):
    """Rows whose size is a multiple of 256 -> Q4_K bytes, shape (..., n_blocks * 144)."""
    import numpy as np

    x, shape = _blocks(rows, "Q4_K")
    n = x.shape[0]
    av = np.sqrt((x * x).mean(-1, keepdims=True))
    sub = x.reshape(n, 8, 32)
    w = (av[:, :, None] + np.abs(sub))
    scales, mins = _fit_min_scale(sub, w, 15)
    max_scale, max_min = scales.max(-1), mins.max(-1)
    inv_s = np.where(max_scale > 0, 63.0 / np.where(max_scale > 0, max_scale, 1), 0.0)
    inv_m = np.where(max_min > 0, 63.0 / np.where(max_min > 0, max_min, 1), 0.0)
    ls = np.clip(_rint(inv_s[:, None] * scales), 0, 63).astype(np.uint8)
    lm = np.clip(_rint(inv_m[:, None] * mins), 0, 63).astype(np.uint8)
    d = (max_scale / 63.0).astype(np.float16)
    dmin = (max_min / 63.0).astype(np.float16)
    ds = d.astype(np.float32)[:, None] * ls
    dm = dmin.astype(np.float32)[:, None] * lm
    safe = np.where(ds > 0, ds, 1.0)
    L = np.where(ds[..., None] > 0, _rint((sub + dm[..., None]) / safe[..., None]), 0)
    L = np.clip(L, 0, 15).astype(np.uint8).reshape(n, 4, 2, 32)
    qs = (L[:, :, 0, :] | (L[:, :, 1, :] << 4)).reshape(n, 128)
    packed = np.empty((n, 12), dtype=np.uint8)
    packed[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    packed[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (ls[:, 4:] & 0x0F) | ((lm[:, 4:] & 0x0F) << 4)
    out = np.concatenate([d.reshape(n, 1).view(np.uint8), dmin.reshape(n, 1).view(np.uint8), packed, qs], axis=1)
    return out.reshape(*shape[:-1], shape[-1] * 144)


def _fit_symmetric(x, nmax: int):
    """make_qx_quants(rmse_type=1) over the last axis: x ~ scale * L, L in [-nmax, nmax-1]; returns scale."""
    import numpy as np

    w = x * x
    idx = np.abs(x).argmax(-1)
    mx = np.take_along_axis(x, idx[..., None], -1)[..., 0]
    zero = np.abs(mx) < 1e-30
    mx = np.where(zero, 1.0, mx)

    def sums(iscale):
        L = np.clip(_rint(iscale[..., None] * x), -nmax, nmax - 1).astype(np.float32)
        return (w * x * L).sum(-1), (w * L * L).sum(-1)

    sumlx, suml2 = sums(-nmax / mx)
    scale = sumlx / np.where(suml2 > 0, suml2, 1.0)
    best = scale * sumlx
    for i in range(-9, 10):
        if i == 0:
            continue
        slx, sl2 = sums(-(nmax + 0.1 * i) / mx)
        better = (sl2 > 0) & (slx * slx > best * sl2)
        s = slx / np.where(sl2 > 0, sl2, 1.0)
        scale = np.where(better, s, scale)
        best = np.where(better, s * slx, best)
    return np.where(zero, 0.0, scale).astype(np.float32)


def quantize_q6_k(rows):
    """Rows whose size is a multiple of 256 -> Q6_K bytes, shape (..., n_blocks * 210)."""
    import numpy as np

    x, shape = _blocks(rows, "Q6_K")
    n = x.shape[0]
    sub = x.reshape(n, 16, 16)
    scales = _fit_symmetric(sub, 32)
    idx = np.abs(scales).argmax(-1)
    max_scale = np.take_along_axis(scales, idx[:, None], -1)[:, 0]
    zero = max_scale == 0
    iscale = np.where(zero, 0.0, -128.0 / np.where(zero, 1.0, max_scale))
    ls = np.clip(_rint(iscale[:, None] * scales), -128, 127).astype(np.int8)
    d = np.where(zero, 0.0, 1.0 / np.where(zero, 1.0, iscale)).astype(np.float16)
    ds = d.astype(np.float32)[:, None] * ls.astype(np.float32)
    safe = np.where(ds != 0, ds, 1.0)
    L = np.where(ds[..., None] != 0, _rint(sub / safe[..., None]), 0)
    q = (np.clip(L, -32, 31) + 32).astype(np.uint8).reshape(n, 2, 2, 64)
    ql = ((q[:, :, 0, :] & 0x0F) | ((q[:, :, 1, :] & 0x0F) << 4)).reshape(n, 128)
    hi = (q.reshape(n, 2, 4, 32) >> 4)
    qh = (hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)).reshape(n, 64)
    out = np.concatenate([ql, qh, ls.view(np.uint8), d.reshape(n, 1).view(np.uint8)], axis=1)
    return out.reshape(*shape[:-1], shape[-1] * 210)
