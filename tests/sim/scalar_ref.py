"""Scalar, pure-Python-int re-implementations of the numerics spec (docs/numerics.md).

Written element by element from the documented formulas, independently of the vectorised
numpy code in flightllm.contract.numerics, so the golden simulator's results can be checked
against something that does not share its code. Only the ROM tables are shared (they are data).
"""

from flightllm.contract.numerics import tables


def rnd(v: int, s: int) -> int:
    return (v + (1 << (s - 1))) >> s if s > 0 else v


def sat(v: int, bits: int) -> int:
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return min(max(v, lo), hi)


def requant(acc: int, mult: int, shift: int, bits: int, relu: bool = False) -> int:
    y = rnd(acc * mult, shift)
    return sat(max(y, 0) if relu else y, bits)


def exp2_row(xs, m1, s1, valid):
    """Q23 exponentials relative to the row max (0 where masked), or None if nothing is live."""
    exp2 = [int(v) for v in tables()["exp2"]]
    live = [x for x, ok in zip(xs, valid) if ok and x != -(1 << 31)]
    if not live:
        return None
    mx = max(live)
    es = []
    for x, ok in zip(xs, valid):
        if not ok or x == -(1 << 31):
            es.append(0)
            continue
        u = max(-rnd((x - mx) * m1, s1), 0)
        es.append((exp2[u % 256] << 8) >> min(u // 256, 62))
    return es


def softmax_row(xs, m1, s1, valid):
    es = exp2_row(xs, m1, s1, valid)
    if es is None:
        return [0] * len(xs)
    recip = (1 << 54) // sum(es)
    return [min(127, rnd(e * recip, 47)) for e in es]


def softmax_deferred_row(xs, m1, s1, valid):
    es = exp2_row(xs, m1, s1, valid)
    if es is None:
        return [0] * len(xs), 0
    q = [rnd(e * 127, 23) for e in es]
    return q, (1 << 60) // (127 * sum(es))


def rsqrt(v: int):
    e = v.bit_length() - 1
    mant = (v >> (e - 9)) if e >= 9 else (v << (9 - e))
    par = e & 1
    return int(tables()["rsqrt"][par][mant - 512]), (e - par) // 2


def norm_row(xs, gamma, shift, eps, beta=None, center=False):
    lim = 1 << 23
    xs = [min(max(x, -lim), lim - 1) for x in xs]
    n = len(xs)
    if center:
        mean = sum(xs) // n
        xs = [x - mean for x in xs]
    var = sum(x * x for x in xs) // n + eps
    r, k = rsqrt(max(var, 1))
    out = [rnd(x * r * g, 15 + k) for x, g in zip(xs, gamma)]
    if beta is not None:
        out = [o + b for o, b in zip(out, beta)]
    return [rnd(o, shift) for o in out]


def act(x, func, m1, s1, m2, s2):
    if func == "relu":
        gate = 32768 if x > 0 else 0
    else:
        t = rnd(x * m1, s1)
        if t >= 2048:
            gate = 32768
        elif t < -2048:
            gate = 0
        else:
            gate = int(tables()[func][t + 2048])
    return rnd(rnd(x * gate, 15) * m2, s2)


def rope_row(xs, cos, sin, m1, s1, group, interleaved):
    out = list(xs)
    half = group // 2
    for h in range(0, len(xs), group):
        for j in range(half):
            ia, ib = (h + 2 * j, h + 2 * j + 1) if interleaved else (h + j, h + j + half)
            a, b, c, s = xs[ia], xs[ib], cos[j], sin[j]
            out[ia] = rnd((a * c - b * s) * m1, 14 + s1)
            out[ib] = rnd((a * s + b * c) * m1, 14 + s1)
    return out
