"""The Jay Chou lyrics character language model of "Dive into Deep Learning" (GRU/LSTM chapter), as a task:
the book's samplers, held-out perplexity on unseen lines, and generated text at each evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Iterator

import torch
from torch.nn import functional as F

from ..names import SAMPLINGS, TEXT_SETTINGS, TEXT_SPLITS, lookup
from ..probes import input_grads_at_last_step
from .base import IGNORE, Batch, Items, Spec, Success, Task, exp_or_inf
from .corpus import locate, read_text
from .text import LyricsData, Vocab, batches_per_epoch, consecutive, prepare, random_chunks


MAX_PRED_LEN = 10_000  # characters generated per prefix: more is a text, not a sample
MAX_TEMPERATURE = 100.0  # sampling temperature: far above 1 every character is about as likely as any other
FREQUENCY_BANDS = ((1, 3), (3, 10), (10, 30), (30, 100), (100, 300), (300, 0))  # [lo, hi) training counts; 0: no top


@dataclass
class Lyrics(Task):
    """Next-character prediction on the lyrics corpus. Each step reads seq_len characters per stream
    (the book's num_steps, 35) and scores every next character by cross-entropy; the metric is the
    perplexity exp(loss).

    Training text: the book's first 10,000 characters (setting "book") or every training line ("full"),
    newlines as spaces; held out: the last val_fraction of the corpus's lines that never occur verbatim
    in the training text. Every held-out target in the vocabulary is scored once; characters outside it
    stay in the text as context (an unknown-character input) and are counted, not scored. Samplers: "consecutive" (the book's adjacent sampling: B streams, state carried
    across batches, reset each epoch) and "random" (shuffled chunks, zero state every batch).

    Worked example, seq_len 3, batch 1, text "分开 不分开": x = (分, 开, ' '), y = (开, ' ', 不).

    Memoryless baseline: the unigram entropy of the training text (5.599 nats, perplexity 270, for the
    book's 10,000 characters), the loss of predicting every character by its training frequency; scored
    on the held-out text the same predictor gives 5.40 nats (stats: val_unigram_loss).
    """

    keeps_weights: ClassVar[bool] = True  # a run's kept model stays in its folder (points/KEY.weights.parquet): its analyses can be redone

    name = "lyrics"
    success = Success("none", "a language model is compared with baselines, not solved", whose="nobody")
    lag = "T: characters per training batch (truncated BPTT)"
    sampling: str = "consecutive"
    setting: str = "book"
    val_fraction: float = 0.1  # the last 10% of the corpus's lines are held out
    text_split: str = "tail"  # the book's regime; 'blocks': held-out blocks from the whole corpus, validation and test
    block_lines: int = 40  # split 'blocks': lines per block (a song's worth: the corpus has no song marks)
    eval_streams: int = 0  # held-out texts scored as this many parallel streams, each from a zero state (0: batch_size); 1: one stream from the start, as the n-grams read it
    corpus: str | None = None  # the zip or its folder; else $GRADLAB_DATA, the user cache, a download
    prefixes: tuple[str, ...] = ("分开", "不分开")  # the book's
    pred_len: int = 50  # the book's: characters generated from each prefix
    sample_temperature: float = 1.0  # samples are drawn greedily (as the book) and at this temperature
    _data: LyricsData | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_text(cls, raw: str, **params) -> "Lyrics":
        """The task over a given text instead of the corpus (tests, other corpora)."""
        task = cls(**params)
        task._data = prepare(raw, task.setting, task.val_fraction, task.text_split, task.block_lines)
        return task

    def params(self) -> dict:
        return {k: v for k, v in super().params().items() if k != "_data"}

    @property
    def data(self) -> LyricsData:
        if self._data is None:
            self._data = prepare(read_text(locate(self.corpus)), self.setting, self.val_fraction, self.text_split, self.block_lines)
        return self._data

    @property
    def vocab(self) -> Vocab:
        return self.data.vocab

    @property
    def spec(self) -> Spec:
        v = len(self.vocab)
        return Spec(input="tokens", input_size=v, output_size=v, loss="cross_entropy", metric="perplexity")

    def check(self, length: int) -> None:
        super().check(length)
        lookup(SAMPLINGS, self.sampling, "sampling")
        lookup(TEXT_SETTINGS, self.setting, "setting")
        lookup(TEXT_SPLITS, self.text_split, "text_split")
        if self.block_lines < 1:
            raise ValueError(f"block_lines must be >= 1, got {self.block_lines}.")
        if self.eval_streams < 0:
            raise ValueError(f"eval_streams must be >= 0 (streams the held-out text is scored as; 0: batch_size, 1: one stream), got {self.eval_streams}.")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}.")
        empty = [i for i, prefix in enumerate(self.prefixes) if not prefix]
        if empty:
            raise ValueError(f"prefixes holds an empty prefix (item {empty[0]}): text is generated from at least one character, e.g. prefixes=[\"分开\"].")
        if not 0 <= self.pred_len <= MAX_PRED_LEN:
            raise ValueError(f"pred_len must be in 0 .. {MAX_PRED_LEN} (characters generated per prefix; the book's 50), got {self.pred_len}.")
        if not 0 < self.sample_temperature <= MAX_TEMPERATURE:
            raise ValueError(f"sample_temperature must be in (0, {MAX_TEMPERATURE:g}] (greedy text is always drawn as well; at "
                             f"{MAX_TEMPERATURE:g} the samples are already as good as uniform), got {self.sample_temperature}.")

    def ready(self, batch_size: int, length: int) -> None:
        """Checks that need the text (found, or fetched, on first use): fail before any training."""
        for prefix in self.prefixes:
            self.vocab.encode(prefix, "prefix")
        if self.data.stats["val_targets_scored"] < 1:
            raise ValueError(f"there is no held-out line the training text lacks (val_fraction {self.val_fraction}, split {self.text_split!r}): "
                             "every held-out line repeats a training line. Hold out more (val_fraction) or other lines (text_split).")
        if self.steps_per_epoch(batch_size, length) < 1:
            raise ValueError(f"training text of {len(self.data.train_ids)} characters is too short for batch_size x seq_len.")

    def baseline(self, length: int) -> float:
        return self.data.stats["unigram_entropy"]

    def steps_per_epoch(self, batch_size: int, length: int) -> int:
        return batches_per_epoch(len(self.data.train_ids), batch_size, length, self.sampling)

    def stream(self, gen: torch.Generator, batch_size: int, length: int, device: str | torch.device) -> Iterator[Batch]:
        ids = self.data.train_ids.to(device)
        carry = self.sampling == "consecutive"
        while True:  # epoch after epoch; the state starts from zero at each epoch's first batch
            if carry:
                batches = consecutive(ids, batch_size, length)
            else:
                batches = random_chunks(ids, batch_size, length, gen)
            for k, (x, y) in enumerate(batches):
                yield Batch(x, y, carry=carry and k > 0)

    def held_out(self, batch_size: int, length: int, device: str | torch.device) -> list[Batch]:
        """The held-out (validation) text as `batch_size` (or eval_streams) consecutive streams (fewer for a short text),
        state carried, covering every target exactly once: the last batch is shorter, and the padding that
        evens the streams out, like a target outside the vocabulary, is never scored (IGNORE)."""
        return self._streams(self.data.val_ids, batch_size, length, device)

    def test_set(self, batch_size: int, length: int, device: str | torch.device) -> list[Batch] | None:
        """The test text (split 'blocks'), batched as held_out; None without one."""
        ids = self.data.test_ids
        return None if ids is None or len(ids) < 2 else self._streams(ids, batch_size, length, device)

    def _streams(self, ids: torch.Tensor, batch_size: int, length: int, device: str | torch.device) -> list[Batch]:
        n = len(ids) - 1  # next-character targets
        streams = max(1, min(self.eval_streams or batch_size, n // length))
        per_stream = -(-n // streams)  # ceil: the last stream is padded
        pad = streams * per_stream - n
        x = torch.cat([ids[:-1], ids.new_zeros(pad)]).view(streams, per_stream).T  # (L, B)
        y = torch.cat([ids[1:], ids.new_full((pad,), IGNORE)]).view(streams, per_stream).T
        y = y.masked_fill(y == self.vocab.unknown_id, IGNORE)  # not a character the model can name
        return [Batch(x[i : i + length].to(device), y[i : i + length].to(device), carry=i > 0) for i in range(0, per_stream, length)]

    def row_extras(self, row: dict) -> dict:
        return {"train_ppl": exp_or_inf(row["train_loss"]), "val_ppl": row["val_metric"]}

    def observe(self, model: torch.nn.Module, row: dict, seed: int) -> dict[str, list[dict]]:
        """Greedy and sampled text from each prefix, reproducible per epoch."""
        if row["diverged"]:
            return {}
        epoch = int(round(row["epoch"]))
        gen = torch.Generator().manual_seed(seed * 1000 + epoch)
        rows = []
        for prefix in self.prefixes:
            for temperature in (0.0, self.sample_temperature):
                text = generate(model, self.vocab, prefix, self.pred_len, temperature, gen)
                rows.append({"epoch": epoch, "step": row.get("step"), "prefix": prefix, "temperature": temperature, "text": text})
        return {"samples": rows}

    def context_items(self, model: torch.nn.Module, held_out: list, count: int, longest: int) -> dict[str, list[Items]]:
        """`count` positions of the held-out text (the test blocks where there are some: the run never
        selected on them) and of the training text, each with the `longest` characters before it; their full
        context is the whole text before them."""
        device = next(model.parameters()).device
        held = self.data.test_ids if self.data.test_ids is not None else self.data.val_ids
        out = {}
        for split, ids in (("held out", held), ("training", self.data.train_ids)):
            pos = self._positions(ids, longest, count)  # (N,) target positions
            windows = _windows(ids, pos, longest)  # (K, N): the K characters before
            out[split] = [Items(windows.to(device), ids[pos].to(device), ids, pos)]
        return out

    def analyse(self, model: torch.nn.Module, lengths: tuple[int, ...], count: int) -> dict[str, list[dict]]:
        """'context_grads': ||dL/dz_t|| for the input k steps before the predicted held-out character, with
        the longest context (z: the input's projection, the row of W_x the step reads)."""
        if not lengths:
            return {}
        longest = max(lengths)
        device = next(model.parameters()).device
        ids = self.data.test_ids if self.data.test_ids is not None else self.data.val_ids
        pos = self._positions(ids, longest, count)
        targets = ids[pos].to(device)
        windows = _windows(ids, pos, longest).to(device)  # (K, N)
        norms = torch.stack([  # (chunks, K): sequences scored in chunks (the graph holds K x chunk x G*H)
            input_grads_at_last_step(model, windows[:, i : i + 125], lambda out, y=targets[i : i + 125]: F.cross_entropy(out, y, reduction="sum")).pow(2)
            * min(125, len(pos) - i) for i in range(0, len(pos), 125)]).sum(0).div(len(pos)).sqrt()
        return {"context_grads": [{"distance": longest - t, "input_grad_norm": float(v)} for t, v in enumerate(norms.tolist())],
                "by_frequency": self.by_frequency(model)}

    def by_frequency(self, model: torch.nn.Module, order: int = 5) -> list[dict]:
        """Where the network wins or loses against counting: every scored target of the held-out text (the test
        blocks where there are some), the whole text read as one stream from its start, as the n-gram reads it;
        per band of the target's count in the training text, the share of targets, the network's mean loss, the
        modified Kneser-Ney `order`-gram's, and the band's part of the mean gap (network - n-gram)."""
        from ..baselines.ngram import KneserNey
        from ..context import stream_losses

        held, split = (self.data.test_ids, "test") if self.data.test_ids is not None else (self.data.val_ids, "validation")
        if held is None or len(held) < 2:
            return []
        unknown = self.vocab.unknown_id
        positions = torch.arange(1, len(held))
        positions = positions[held[positions] != unknown]
        if not len(positions):
            return []
        net = stream_losses(model, held, positions).double()
        train = self.data.train_ids.tolist()
        gram = torch.tensor(KneserNey(order, len(self.vocab), "modified").fit(train).losses(held.tolist(), unknown), dtype=torch.float64)
        counts = torch.bincount(self.data.train_ids, minlength=len(self.vocab) + 1)[held[positions]]
        rows = []
        for lo, hi in FREQUENCY_BANDS:
            band = (counts >= lo) & (counts < hi) if hi else counts >= lo
            n = int(band.sum())
            rows.append({"split": split, "band": f"{lo}+" if not hi else f"{lo}-{hi - 1}", "count_from": lo, "targets": n,
                         "share": n / len(positions), "net_loss": float(net[band].mean()) if n else float("nan"),
                         "ngram_loss": float(gram[band].mean()) if n else float("nan"), "ngram_order": order,
                         "gap_part": float((net[band] - gram[band]).sum()) / len(positions)})
        return rows

    def long_context(self, model: torch.nn.Module, modes: tuple[str, ...]) -> tuple[dict, dict[str, list[dict]]]:
        """The kept model's held-out texts, each read as one stream from its start, in the evaluation modes asked for
        (gradlab.evaluation: 'cache', Grave et al.'s neural cache; 'dynamic', Krause et al.'s dynamic evaluation;
        'mix', the network mixed with the modified Kneser-Ney 5-gram and its cache), each mode's settings chosen on
        the validation text and the test text scored once: the runs row's columns, and the 'by_distance' table
        (where each gains, by how far back the target's context last occurred)."""
        from ..evaluation import evaluate_modes

        data = self.data
        return evaluate_modes(model, {"val": data.val_ids, "test": data.test_ids}, data.counting, self.vocab.unknown_id, modes, data.train_ids)

    def _positions(self, ids: torch.Tensor, longest: int, count: int) -> torch.Tensor:
        """Target positions with `longest` characters before them and a target in the vocabulary: a fixed draw."""
        candidates = torch.arange(longest, len(ids))
        candidates = candidates[ids[candidates] != self.vocab.unknown_id]
        pick = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(0))[:count]
        return candidates[pick].sort().values

    def stats(self) -> dict:
        return dict(self.data.stats)


def _windows(ids: torch.Tensor, pos: torch.Tensor, k: int) -> torch.Tensor:
    """(k, N): the k characters before each position."""
    return ids[pos[None, :] - torch.arange(k, 0, -1)[:, None]]


@torch.no_grad()
def generate(model: torch.nn.Module, vocab: Vocab, prefix: str, length: int, temperature: float = 0.0,
             gen: torch.Generator | None = None) -> str:
    """prefix + `length` characters: greedy (temperature 0, as the book) or sampled at `temperature`."""
    if not prefix:
        raise ValueError("prefix must hold at least one character.")
    device = next(model.parameters()).device
    ids = vocab.encode(prefix, "prefix").to(device)
    logits, state = model(ids[:, None])  # (P, 1, V)
    out = ids.tolist()
    for _ in range(length):
        last = logits[-1, 0].double()
        if temperature <= 0:
            nxt = int(last.argmax())
        else:
            probs = torch.softmax(last / temperature, dim=0).cpu()
            nxt = int(torch.multinomial(probs, 1, generator=gen))
        out.append(nxt)
        logits, state = model(torch.tensor([[nxt]], device=device), state)
    return vocab.decode(out)


TASK = Lyrics
