"""Would torch.compile's fused element-wise loops bring the scratch LSTM to the fused kernel's speed on CPU?
Times one forward+backward at the adding shape four ways, interleaved: gradlab's LSTMSequence, the same loop
with eager gate math, that loop with the gate math compiled by Inductor, and torch.nn.LSTM (oneDNN).
Usage: python scripts/compile_elementwise.py [--threads 2] [--rounds 15]"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gradlab.cells.bptt import LSTMSequence, weight_grad


def gates_forward(gates: torch.Tensor, c: torch.Tensor):
    """One step's element-wise LSTM math (i, f, o, g order): h, c, the sigmoid gates, g, tanh(c)."""
    i, f, o, g = gates.split(gates.shape[-1] // 4, dim=-1)
    i, f, o, g = i.sigmoid(), f.sigmoid(), o.sigmoid(), g.tanh()
    c_next = f * c + i * g
    tanh_c = c_next.tanh()
    return o * tanh_c, c_next, torch.cat([i, f, o], -1), g, tanh_c


def gates_backward(dh, grad_c, ifo, g, tanh_c, c_prev):
    """One step back: d loss / d gate pre-activations (B, 4H) and the cell-state gradient one step earlier."""
    i, f, o = ifo.split(ifo.shape[-1] // 3, dim=-1)
    grad_c = grad_c + dh * o * (1 - tanh_c * tanh_c)
    d_ifo = torch.cat([grad_c * g, grad_c * c_prev, dh * tanh_c], -1)
    grad_a = torch.cat([d_ifo * ifo * (1 - ifo), grad_c * i * (1 - g * g)], -1)
    return grad_a, grad_c * f


def loop(fwd, bwd, x, w, h0, c0, grad_out):
    """Forward and written-out backward with the given gate math; returns the recurrent weight's gradient."""
    h, c, saved, outputs = h0, c0, [], []
    for x_t in x.unbind(0):
        h, c_next, ifo, g, tanh_c = fwd(torch.addmm(x_t, h, w), c)
        saved.append((ifo, g, tanh_c, c))
        c = c_next
        outputs.append(h)
    grad_c, dh, grad_as, w_t = torch.zeros_like(c0), grad_out[-1], [], w.T
    for t in range(x.shape[0] - 1, -1, -1):
        grad_a, grad_c = bwd(dh, grad_c, *saved[t])
        grad_as.append(grad_a)
        if t:
            dh = torch.addmm(grad_out[t - 1], grad_a, w_t)
    return weight_grad(h0, torch.stack(outputs), torch.stack(grad_as[::-1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    T, B, I, H = 100, 50, 2, 128  # the adding task's shape
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(T, B, 4 * H, generator=gen)
    w = torch.randn(H, 4 * H, generator=gen) * H**-0.5
    h0, c0, grad_out = torch.zeros(B, H), torch.zeros(B, H), torch.randn(T, B, H, generator=gen)
    start = time.perf_counter()
    fwd_c = torch.compile(gates_forward, fullgraph=True, dynamic=False)
    bwd_c = torch.compile(gates_backward, fullgraph=True, dynamic=False)
    try:
        compiled = loop(fwd_c, bwd_c, x, w, h0, c0, grad_out)
    except Exception as err:  # no C++ compiler, or Inductor missing on this platform: nothing to compare
        raise SystemExit(f"torch.compile could not build the gate math here ({type(err).__name__}: {err}); "
                         "Inductor needs a C++ compiler (gcc) on CPU.") from None
    print(f"compile: {time.perf_counter() - start:.1f} s; compiled vs eager gate math, max |diff| of dW_h: "
          f"{(compiled - loop(gates_forward, gates_backward, x, w, h0, c0, grad_out)).abs().max():.2e}")
    xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
    lstm = torch.nn.LSTM(I, H)
    xi = torch.randn(T, B, I, generator=gen)

    def gradlab_call():
        out, _ = LSTMSequence.apply(xs, h0, c0, ws)
        out.backward(grad_out)

    def fused_call():
        out, _ = lstm(xi)
        out.backward(grad_out)

    calls = {"gradlab LSTMSequence": gradlab_call, "loop, eager gate math": lambda: loop(gates_forward, gates_backward, x, w, h0, c0, grad_out),
             "loop, compiled gate math": lambda: loop(fwd_c, bwd_c, x, w, h0, c0, grad_out), "torch.nn.LSTM (fused)": fused_call}
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(args.rounds + 3):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    fused = statistics.median(times["torch.nn.LSTM (fused)"][3:])
    for name, ts in times.items():
        ms = statistics.median(ts[3:])
        print(f"{name:28s} {ms * 1e3:7.2f} ms  {ms / fused:5.2f}x fused")


if __name__ == "__main__":
    main()
