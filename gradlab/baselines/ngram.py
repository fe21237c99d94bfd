"""Counting baselines for a character language model: interpolated Kneser-Ney n-grams (Kneser and Ney 1995, in
Chen and Goodman 1998's interpolated form; 'modified': their three discounts per order), fitted on the training
text and scored on exactly the targets the networks are scored on.

Written here rather than taken from a library: what it must match is gradlab's own text handling (one stream of
token ids, an unknown id read as context and never scored, the networks' vocabulary as the event space), and
the well-kept implementations do not fit it: NLTK's KneserNeyInterpolated scores a context it has not seen
through a uniform bottom it reaches only through its own padding and takes a Python call per probability
(minutes for the lyrics), KenLM needs its C++ build and its own file formats. tests/test_ngram.py checks this
one against counts by hand on a small text, an independent brute-force implementation, the normalisation of
every context's distribution, and the published values of the lyrics' split.

P(w | h) for the longest order uses counts c; every lower order uses continuation counts N1+(. g w) (how many
distinct tokens precede g w), and each order interpolates with the next lower by the discounted mass; the
lowest interpolates with the uniform distribution over the vocabulary, so every distribution sums to 1 over it.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field

BOS = -1  # the start of a stream: the context before its first token


@dataclass
class _Order:
    """One order's counts: per n-gram its count (raw at the top order, continuation below), per context the
    total, the number of distinct continuations, and (modified) how many continuations occur 1, 2, 3+ times."""

    counts: dict = field(default_factory=dict)  # (context..., w) -> count
    total: dict = field(default_factory=dict)  # context -> sum of counts
    types: dict = field(default_factory=dict)  # context -> (n1, n2, n3plus) distinct continuations by count
    discounts: tuple[float, float, float] = (0.75, 0.75, 0.75)


class KneserNey:
    """An interpolated Kneser-Ney model of `order` (2: bigram) over token ids 0 .. vocab_size - 1.

    discount: a number (one discount for every order, 0.75 the common choice), or "modified" (Chen and
    Goodman's D1, D2, D3+ per order, from the counts of counts)."""

    def __init__(self, order: int, vocab_size: int, discount: float | str = 0.75):
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}.")
        if discount != "modified" and not (isinstance(discount, (int, float)) and 0 < discount < 1):
            raise ValueError(f"discount must be in (0, 1) or 'modified', got {discount!r}.")
        self.order, self.vocab_size, self.discount = order, vocab_size, discount
        self.orders: list[_Order] = []

    def fit(self, ids: list[int], unknown: int | None = None) -> "KneserNey":
        """Count the n-grams of one stream of ids (a token `unknown` is context, never an event)."""
        n = self.order
        stream = [BOS] * (n - 1) + list(ids)
        top: Counter = Counter()
        for i in range(n - 1, len(stream)):
            if stream[i] != unknown:
                top[tuple(stream[i - n + 1 : i + 1])] += 1
        by_order: list[Counter] = [Counter() for _ in range(n)]  # index k: (k + 1)-grams
        by_order[n - 1] = top
        for k in range(n - 2, -1, -1):  # continuation counts: distinct left extensions of each (k + 1)-gram
            seen = defaultdict(set)
            for gram in by_order[k + 1]:
                seen[gram[1:]].add(gram[0])
            by_order[k] = Counter({g: len(left) for g, left in seen.items()})
        self.orders = [self._order(c) for c in by_order]
        return self

    def _order(self, counts: Counter) -> _Order:
        total: Counter = Counter()
        types: dict = defaultdict(lambda: [0, 0, 0])
        for gram, c in counts.items():
            h = gram[:-1]
            total[h] += c
            types[h][min(c, 3) - 1] += 1
        level = _Order(dict(counts), dict(total), {h: tuple(v) for h, v in types.items()})
        if self.discount == "modified":
            nc = Counter(c for c in counts.values() if c <= 4)  # counts of counts: how many n-grams occur exactly 1, 2, 3, 4 times
            n1, n2, n3, n4 = (nc.get(i, 0) for i in (1, 2, 3, 4))
            y = n1 / (n1 + 2 * n2) if n1 + 2 * n2 else 0.5
            level.discounts = tuple(min(max(d, 0.0), float(i)) for i, d in (  # Chen and Goodman's estimates, kept in [0, count]
                (1, 1 - 2 * y * n2 / n1 if n1 else 0.5), (2, 2 - 3 * y * n3 / n2 if n2 else 1.0), (3, 3 - 4 * y * n4 / n3 if n3 else 1.5)))
        else:
            level.discounts = (float(self.discount),) * 3
        return level

    def prob(self, context: tuple, w: int) -> float:
        """P(w | the last order - 1 tokens of `context`), interpolated down to the uniform distribution."""
        context = tuple(context[-(self.order - 1):]) if self.order > 1 else ()
        context = (BOS,) * (self.order - 1 - len(context)) + context
        p = 1.0 / self.vocab_size
        for k in range(self.order):  # from unigrams (k = 0) up: each order interpolates with the one below
            level = self.orders[k]
            h = context[len(context) - k :] if k else ()
            total = level.total.get(h, 0)
            if not total:
                continue  # a context never seen at this order: its distribution is the lower order's
            d1, d2, d3 = level.discounts
            c = level.counts.get(h + (w,), 0)
            n1, n2, n3 = level.types[h]
            own = max(c - (d1 if c == 1 else d2 if c == 2 else d3), 0.0) / total if c else 0.0
            p = own + (d1 * n1 + d2 * n2 + d3 * n3) / total * p
        return p

    def losses(self, ids: list[int], unknown: int | None = None) -> list[float]:
        """-ln P of every target of one stream after its first token (the networks' held-out targets), a target
        `unknown` left out (read as context, not scored)."""
        out = []
        for p in range(1, len(ids)):
            if ids[p] != unknown:
                out.append(-math.log(self.prob(tuple(ids[max(0, p - self.order + 1) : p]), ids[p])))
        return out
