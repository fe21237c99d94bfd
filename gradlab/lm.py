"""Character language model: a cell plus the seed's output layer; held-out perplexity; generation."""

from __future__ import annotations

import math

import torch
from torch import nn

from .cells import State, create
from .tasks.lyrics import Vocab, consecutive

OUTPUT_STD = 0.01  # the seed draws W_hq from N(0, 0.01) too


class CharLM(nn.Module):
    """tokens (T, B) -> logits (T, B, V): the recurrent cell, then H_t W_hq + b_q for all steps at once."""

    def __init__(self, cell: nn.Module, vocab_size: int, seed: int = 0):
        super().__init__()
        self.cell = cell
        gen = torch.Generator().manual_seed(seed + 1)  # its own stream: the cell's draws stay the same
        ref = next(cell.parameters())
        w = torch.randn(cell.hidden_size, vocab_size, generator=gen, dtype=torch.float64) * OUTPUT_STD
        self.W_hq = nn.Parameter(w.to(ref))  # (H, V)
        self.b_q = nn.Parameter(torch.zeros(vocab_size, dtype=ref.dtype, device=ref.device))

    def forward(self, tokens: torch.Tensor, state: State = None) -> tuple[torch.Tensor, State]:
        out, state = self.cell(tokens, state)  # (T, B, H)
        logits = torch.addmm(self.b_q, out.reshape(-1, out.shape[-1]), self.W_hq)  # (T*B, V), bias fused
        return logits.view(*out.shape[:-1], -1), state  # (T, B, V)


def build_lm(cell: str, impl: str, vocab_size: int, hidden_size: int, *, seed: int = 0, **options) -> CharLM:
    dtype, device = options.pop("dtype", torch.float32), options.pop("device", "cpu")
    rnn = create(cell, impl, vocab_size, hidden_size, seed=seed, dtype=dtype, device=device, **options)
    return CharLM(rnn, vocab_size, seed)


def exp_or_inf(x: float) -> float:
    """exp that says inf instead of raising: a huge loss is a result to record."""
    return math.exp(x) if x < 709.0 else float("inf")


def detach(state: State) -> State:
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


@torch.no_grad()
def perplexity(model: CharLM, ids: torch.Tensor, batch_size: int, num_steps: int) -> float:
    """exp(mean next-character cross-entropy) over ids read as B consecutive streams, state carried."""
    device = model.W_hq.device
    batch_size = max(1, min(batch_size, (len(ids) - 1) // (num_steps + 1)))  # short texts: fewer streams
    total, count, state = 0.0, 0, None
    for x, y in consecutive(ids, batch_size, num_steps):
        logits, state = model(x.to(device), state)
        total += nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.to(device).reshape(-1), reduction="sum").item()
        count += y.numel()
    return exp_or_inf(total / count) if count else float("nan")


@torch.no_grad()
def generate(
    model: CharLM, vocab: Vocab, prefix: str, length: int, temperature: float = 0.0, gen: torch.Generator | None = None
) -> str:
    """prefix + `length` characters: greedy (temperature 0, as the book) or sampled at `temperature`."""
    if not prefix:
        raise ValueError("prefix must hold at least one character.")
    ids = vocab.encode(prefix, "prefix").to(model.W_hq.device)
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
        logits, state = model(torch.tensor([[nxt]], device=ids.device), state)
    return vocab.decode(out)
