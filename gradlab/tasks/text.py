"""The lyrics text: the book's or the full training text, a held-out split by whole lines, a stable
vocabulary, and the book's two samplers."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from ..names import TEXT_SETTINGS, TEXT_SPLITS, lookup

BOOK_CHARS = 10_000  # the book trains on the first 10,000 characters


@dataclass
class Vocab:
    """Characters in code-point order: the same ids in every process (the book's list(set()) is not)."""

    idx_to_char: list[str]
    char_to_idx: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.char_to_idx = {ch: i for i, ch in enumerate(self.idx_to_char)}

    def __len__(self) -> int:
        return len(self.idx_to_char)

    def encode(self, text: str, what: str = "text") -> torch.Tensor:
        """Token ids (N,); an unknown character is a ValueError naming it."""
        unknown = sorted({ch for ch in text if ch not in self.char_to_idx})
        if unknown:
            shown = ", ".join(repr(ch) for ch in unknown[:10])
            raise ValueError(
                f"{what} {text!r} has characters outside the vocabulary: {shown}. The vocabulary holds the "
                f"{len(self)} characters of the training text."
            )
        return torch.tensor([self.char_to_idx[ch] for ch in text], dtype=torch.long)

    @property
    def unknown_id(self) -> int:
        """The id of a character outside the vocabulary: one past the last, which the cells read as the
        all-zero one-hot input (no character they know)."""
        return len(self)

    def encode_with_unknown(self, text: str) -> torch.Tensor:
        """Token ids (N,), characters outside the vocabulary as `unknown_id`."""
        return torch.tensor([self.char_to_idx.get(ch, self.unknown_id) for ch in text], dtype=torch.long)

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        return "".join(self.idx_to_char[int(i)] for i in ids)


@dataclass
class LyricsData:
    train_text: str
    val_text: str
    vocab: Vocab
    train_ids: torch.Tensor  # (N_train,)
    val_ids: torch.Tensor  # (N_val,)
    stats: dict[str, float | int | str]
    test_text: str = ""  # split 'blocks': held-out blocks the run never selects on (empty for 'tail')
    test_ids: torch.Tensor | None = None  # (N_test,)
    counting: dict = field(default_factory=dict)  # per held-out text ('val', 'test'): the counting models' probability of each scored target (ngram_losses)


def split_lines(raw: str, val_fraction: float) -> tuple[list[str], list[str]]:
    """Whole lines: the last `val_fraction` of the corpus's lines are held out, the rest train."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
    lines = raw.replace("\r", " ").split("\n")
    n_val = max(1, math.ceil(len(lines) * val_fraction))
    return lines[:-n_val], lines[-n_val:]


def split_blocks(raw: str, val_fraction: float, block_lines: int) -> tuple[list[str], list[str], list[str]]:
    """Blocks of `block_lines` consecutive lines (a verse or a song's worth): every (1 / val_fraction)-th
    block is held out, the held-out blocks alternately validation and test; the rest train. Held-out text
    comes from every part of the corpus, not only its end, and a block keeps its lines' order."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
    if block_lines < 1:
        raise ValueError(f"block_lines must be >= 1, got {block_lines}.")
    lines = raw.replace("\r", " ").split("\n")
    blocks = [lines[i : i + block_lines] for i in range(0, len(lines), block_lines)]
    cycle = max(2, round(1 / val_fraction))
    held = [b for i, b in enumerate(blocks) if i % cycle == cycle // 2]  # mid-cycle: the first block trains
    train = [ln for i, b in enumerate(blocks) if i % cycle != cycle // 2 for ln in b]
    return train, [ln for b in held[0::2] for ln in b], [ln for b in held[1::2] for ln in b]


def _unseen(lines: list[str], train_text: str) -> list[str]:
    """The non-empty lines that never occur verbatim in the training text (lyrics repeat choruses)."""
    return [ln for ln in lines if ln.strip() and ln not in train_text]


def prepare(raw: str, setting: str = "book", val_fraction: float = 0.1, split: str = "tail", block_lines: int = 40) -> LyricsData:
    """Training text as the book makes it (newlines -> spaces, first 10,000 characters for 'book'), and
    held-out text from lines the model never sees: held-out lines that also occur in the training text
    (lyrics repeat choruses) are dropped. Held-out characters outside the vocabulary stay, as the
    unknown id: context the model reads (as no known character), targets it is not scored on.
    Split 'tail' holds out the last lines (validation only); 'blocks' holds out blocks from the whole
    corpus, alternately validation (evaluated during training) and test (scored once, at the end)."""
    lookup(TEXT_SETTINGS, setting, "setting")
    lookup(TEXT_SPLITS, split, "split")
    if split == "tail":
        train_lines, val_lines = split_lines(raw, val_fraction)
        test_lines: list[str] = []
    else:
        train_lines, val_lines, test_lines = split_blocks(raw, val_fraction, block_lines)
    train_text = " ".join(train_lines)
    if setting == "book":
        train_text = train_text[:BOOK_CHARS]
    n_val = sum(1 for ln in val_lines if ln.strip())
    fresh = _unseen(val_lines, train_text)
    val_text = " ".join(fresh)
    vocab = Vocab(sorted(set(train_text)))
    val_ids = vocab.encode_with_unknown(val_text)
    oov = val_ids == vocab.unknown_id
    targets = max(0, len(val_ids) - 1)  # every character after the first is a next-character target
    oov_targets = int(oov[1:].sum())
    stats = {
        "train_chars": len(train_text),
        "vocab_size": len(vocab),
        "val_lines": len(fresh),
        "val_lines_dropped_as_seen": n_val - len(fresh),
        "val_chars": len(val_text),
        "val_oov_chars": int(oov.sum()),
        "val_targets": targets,
        "val_targets_scored": targets - oov_targets,  # in the vocabulary: each scored exactly once
        "val_targets_oov": oov_targets,  # outside it: read as context, not scored
        "unigram_entropy": unigram_entropy(train_text),
        "val_unigram_loss": unigram_loss(train_text, val_text[1:], vocab),
    }
    test_text = " ".join(_unseen(test_lines, train_text))
    test_ids = vocab.encode_with_unknown(test_text) if test_text else None
    if test_ids is not None:
        test_oov = int((test_ids[1:] == vocab.unknown_id).sum())
        stats |= {"test_lines": len(_unseen(test_lines, train_text)), "test_chars": len(test_text),
                  "test_targets_scored": len(test_ids) - 1 - test_oov, "test_unigram_loss": unigram_loss(train_text, test_text[1:], vocab)}
    train_ids = vocab.encode(train_text)
    counting: dict = {}
    stats |= ngram_losses(train_ids, {"val": val_ids, "test": test_ids}, vocab, keep=counting)
    return LyricsData(train_text, val_text, vocab, train_ids, val_ids, stats, test_text, test_ids, counting)


NGRAM_ORDERS = (2, 3, 4, 5)
KEPT_NGRAM = "mkn5"  # the counting model whose per-target probabilities (and its cache's) the data keeps for the evaluation modes


def ngram_losses(train_ids: torch.Tensor, held: dict[str, torch.Tensor | None], vocab: "Vocab", keep: dict | None = None) -> dict[str, float]:
    """The counting baselines on each held-out text: mean -ln P over exactly the targets the networks are scored
    on, for interpolated Kneser-Ney n-grams fitted on the training text (orders 2 to 5; 'kn': one discount,
    0.75; 'mkn': Chen and Goodman's modified discounts), e.g. test_mkn5_loss; and each with a cache of the held-out
    text (gradlab.baselines.cache: mixed with unigram to 5-gram distributions over its last 1,000 characters, each
    target scored before it joins, the weights chosen on the validation text), e.g. test_mkn5cache_loss. Under the
    'tail' split there is no test text: the cache's weights are chosen on the validation text it scores.
    keep: filled per text with the KEPT_NGRAM model's probability of each scored target ('ngram') and its cache's
    ('ngram_cache'), and the caches' own ('cache', targets x orders)."""
    from ..baselines.cache import CACHE_ORDERS, CACHE_WINDOW, CachedNgram, cache_probs
    from ..baselines.ngram import KneserNey

    out: dict = {}
    train = train_ids.tolist()
    texts = {split: ids.tolist() for split, ids in held.items() if ids is not None and len(ids) > 1}
    caches = {split: cache_probs(ids, CACHE_ORDERS, CACHE_WINDOW, vocab.unknown_id) for split, ids in texts.items()}
    for n in NGRAM_ORDERS:
        for name, discount in (("kn", 0.75), ("mkn", "modified")):
            model = KneserNey(n, len(vocab), discount).fit(train)
            probs = {}
            for split, ids in texts.items():
                losses = model.losses(ids, vocab.unknown_id)
                out[f"{split}_{name}{n}_loss"] = sum(losses) / len(losses) if losses else float("nan")
                probs[split] = np.exp(-np.array(losses, dtype=np.float64))
            fit_on = "val" if "val" in probs and len(probs["val"]) else None
            if fit_on is None:
                continue
            cached = CachedNgram(CACHE_ORDERS, CACHE_WINDOW).fit(probs[fit_on], caches[fit_on])
            for split, p in probs.items():
                out[f"{split}_{name}{n}cache_loss"] = float(cached.losses(p, caches[split]).mean()) if len(p) else float("nan")
            if f"{name}{n}" == KEPT_NGRAM:
                out[f"{KEPT_NGRAM}cache_weights"] = cached.describe()
                if keep is not None:
                    for split, p in probs.items():
                        keep[split] = {"ngram": p, "ngram_cache": cached.probs(p, caches[split]), "cache": caches[split]}
    if texts:
        out |= {"ngram_cache_window": CACHE_WINDOW, "ngram_cache_orders": " ".join(map(str, CACHE_ORDERS))}
    return out


def unigram_loss(train_text: str, targets: str, vocab: "Vocab") -> float:
    """Mean -ln p(c) over the in-vocabulary characters of `targets`, p the training text's character
    frequencies: what the memoryless predictor scores on held-out text (nats)."""
    counts = Counter(train_text)
    scored = [c for c in targets if c in counts]
    total = sum(counts.values())
    return float(sum(-math.log(counts[c] / total) for c in scored) / len(scored)) if scored else float("nan")


def unigram_entropy(text: str) -> float:
    """-sum p ln p over the characters of `text` (nats): the loss of the best predictor that ignores the past."""
    counts = torch.tensor(list(Counter(text).values()), dtype=torch.float64)
    p = counts / counts.sum()
    return float(-(p * p.log()).sum())


def consecutive(ids: torch.Tensor, batch_size: int, num_steps: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The book's adjacent sampling: B parallel streams; batch i continues where batch i-1 ended.
    Yields X, Y (T, B) with Y the next characters."""
    batch_len = len(ids) // batch_size
    streams = ids[: batch_size * batch_len].view(batch_size, batch_len)  # (B, L)
    for i in range(0, ((batch_len - 1) // num_steps) * num_steps, num_steps):
        yield streams[:, i : i + num_steps].T, streams[:, i + 1 : i + num_steps + 1].T


def random_chunks(
    ids: torch.Tensor, batch_size: int, num_steps: int, gen: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The book's random sampling: non-overlapping chunks of num_steps in a shuffled order; each
    batch starts from a fresh state. Yields X, Y (T, B)."""
    n_chunks = (len(ids) - 1) // num_steps
    order = torch.randperm(n_chunks, generator=gen)
    starts = torch.arange(num_steps)
    for i in range(0, (n_chunks // batch_size) * batch_size, batch_size):
        pos = order[i : i + batch_size, None] * num_steps + starts  # (B, T)
        yield ids[pos].T, ids[pos + 1].T


def batches_per_epoch(n_ids: int, batch_size: int, num_steps: int, sampling: str) -> int:
    if sampling == "consecutive":
        return (n_ids // batch_size - 1) // num_steps
    return ((n_ids - 1) // num_steps) // batch_size
