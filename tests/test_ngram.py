"""The counting baselines (gradlab.baselines.ngram): interpolated Kneser-Ney against counts by hand on a small
text, against an independent brute-force implementation of the same formulas, every context's distribution
summing to 1 over the vocabulary, and the networks' out-of-vocabulary rule."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest

from gradlab.baselines.ngram import BOS, KneserNey

# a b a b c a b, ids a 0, b 1, c 2 (vocabulary 3)
TEXT = [0, 1, 0, 1, 2, 0, 1]


def test_a_bigram_by_hand():
    """Bigrams with the start: (S a) (a b) (b a) (a b) (b c) (c a) (a b). Continuation counts of the unigrams
    (distinct left neighbours): a {S, b, c} 3, b {a} 1, c {b} 1, of 5. D = 0.75."""
    m = KneserNey(2, 3, 0.75).fit(TEXT)
    uniform = 1 / 3
    p_a = (3 - 0.75) / 5 + 0.75 * 3 / 5 * uniform  # unigram level: 3 distinct continuations
    p_b = (1 - 0.75) / 5 + 0.75 * 3 / 5 * uniform
    p_c = p_b
    # after a: c(a b) = 3 of c(a .) = 3, one distinct continuation
    assert m.prob((0,), 1) == pytest.approx((3 - 0.75) / 3 + 0.75 * 1 / 3 * p_b)
    assert m.prob((0,), 2) == pytest.approx(0.75 * 1 / 3 * p_c)
    # after b: (b a) 1, (b c) 1 of 2, two continuations
    assert m.prob((1,), 0) == pytest.approx((1 - 0.75) / 2 + 0.75 * 2 / 2 * p_a)
    assert m.prob((1,), 1) == pytest.approx(0.75 * 2 / 2 * p_b)
    assert m.prob((BOS,), 0) == pytest.approx((1 - 0.75) / 1 + 0.75 * 1 / 1 * p_a)  # the stream's start is a context of its own
    assert m.prob((), 0) == m.prob((BOS,), 0)  # no context yet: the stream's start
    unseen = 7  # a context never seen: the unigram level itself
    assert [m.prob((unseen,), w) for w in range(3)] == pytest.approx([p_a, p_b, p_c])


def _brute(order: int, V: int, D: float, text: list[int], context: tuple, w: int) -> float:
    """The same formulas, written from scratch over lists (no shared code): top order raw counts, lower orders
    continuation counts, each interpolated with the next, the lowest with the uniform."""
    stream = [BOS] * (order - 1) + text
    grams = [tuple(stream[i - order + 1 : i + 1]) for i in range(order - 1, len(stream))]

    def counts(k: int) -> Counter:  # (k + 1)-grams
        if k == order - 1:
            return Counter(grams)
        higher = counts(k + 1)
        return Counter(g[1:] for g in set(higher))  # distinct left extensions

    def p(k: int) -> float:
        if k < 0:
            return 1 / V
        c = counts(k)
        h = tuple(context[len(context) - k :]) if k else ()
        total = sum(v for g, v in c.items() if g[:-1] == h)
        if not total:
            return p(k - 1)
        kinds = sum(1 for g in c if g[:-1] == h)
        return max(c.get(h + (w,), 0) - D, 0) / total + D * kinds / total * p(k - 1)

    return p(order - 1)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_every_context_sums_to_one_and_matches_an_independent_implementation(order):
    text = [0, 1, 0, 1, 2, 0, 1, 3, 3, 1, 0, 2, 2, 1]
    V = 5  # token 4 never occurs: it still gets its share
    m = KneserNey(order, V, 0.6).fit(text)
    for context in itertools.product([BOS, 0, 1, 2, 3, 4], repeat=max(order - 1, 0)):
        dist = [m.prob(context, w) for w in range(V)]
        assert sum(dist) == pytest.approx(1.0, abs=1e-12) and min(dist) > 0
        for w in range(V):
            assert dist[w] == pytest.approx(_brute(order, V, 0.6, text, context, w), rel=1e-12)


def test_modified_discounts_follow_chen_and_goodman_and_still_normalise():
    text = [i % 7 for i in range(0, 300, 3)] + [1, 2, 1, 2, 3, 1, 2, 5, 6, 5, 6, 0, 0]
    m = KneserNey(3, 7, "modified").fit(text)
    top = Counter(c for c in m.orders[2].counts.values() if c <= 4)
    y = top[1] / (top[1] + 2 * top[2])
    assert m.orders[2].discounts[:2] == pytest.approx((1 - 2 * y * top[2] / top[1], 2 - 3 * y * top[3] / top[2]))
    for context in itertools.product(range(7), repeat=2):
        assert sum(m.prob(context, w) for w in range(7)) == pytest.approx(1.0, abs=1e-12)


def test_an_unknown_token_is_context_never_a_target():
    unknown = 3
    m = KneserNey(2, 3, 0.75).fit(TEXT)
    losses = m.losses([0, 1, unknown, 1, unknown], unknown)
    assert losses == pytest.approx([-math.log(m.prob((0,), 1)), -math.log(m.prob((unknown,), 1))])  # targets 1 and 1; the unknowns skipped
    assert m.prob((unknown,), 1) == pytest.approx((1 - 0.75) / 5 + 0.75 * 3 / 5 / 3)  # a context never seen: the unigram level's
