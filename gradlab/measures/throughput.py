"""How fast each cell runs: one layer's forward (and backward) per impl, timed interleaved inside one point,
against a matmul peak measured in the same point; or the book's lyrics epoch against the book's own code."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

from ..cells import check, check_device, check_fits, create, family
from ..cells.modern import layer_flops as modern_layer_flops
from ..names import DTYPES, lookup
from ..timeshare import BUCKETS, time_shares
from ..timing import interleaved_times, layer_flops, matmul_peak, sync
from . import COMMON_COLUMNS

WORKLOADS = ("cell", "train_step", "lyrics_epoch")
MODES = ("forward", "forward+backward")
GRAPHED = "scratch-graph"  # the scratch cell's whole forward+backward captured once as a CUDA graph, then replayed

COLUMNS = COMMON_COLUMNS | {
    "workload": "cell: one recurrent layer on random data; train_step: one optimiser step as the trainer takes it (the adding task: "
                "forward, loss, backward, clipping with its telemetry, the update and its norm); lyrics_epoch: one training epoch of the book's model",
    "optimizer": "train_step: the optimiser", "lr": "train_step: its learning rate", "clip": "train_step: the clipping strategy",
    "impls": "the impls timed in the point, interleaved", "input_size": "input width I (empty: equal to hidden_size)",
    "mode": "forward, or forward+backward (the issue's 'pass')", "repeats": "timed runs per impl", "warmup": "untimed runs first",
    "ms_median": "median milliseconds per call (per epoch for lyrics_epoch)", "ms_iqr": "interquartile range of the timed runs (ms)",
    "spread": "ms_iqr / ms_median: the timing's relative spread", "noisy": "spread above 0.5 even after retries: noise, no ratio is quoted",
    "attempts": "times the point was timed (again while a spread said noise)", "noise_retries": "retimings allowed while a spread says noise",
    "tokens_per_s": "sequence steps times batch per second", "flops": "matmul FLOPs per call, 2 per multiply-add (timing.py)",
    "gflops": "achieved matmul GFLOP/s", "peak_gflops": "an n x n matmul's GFLOP/s measured in the same point, same device and dtype",
    "peak_fraction": "gflops / peak_gflops", "peak_mem_bytes": "peak CUDA memory allocated (empty on CPU: not measured)",
    "ratio_to_fused": "ms_median over the fast twin's in the same point (twin: cudnn's fused kernel, or the modern cells' scan)",
    "twin": "the impl ratio_to_fused divides by: cudnn for rnn, gru, lstm; scan for lru, mingru, minlstm",
    "reference": "CELL/IMPL timed interleaved with the point's impls on the same data (e.g. lstm/cudnn beside a modern cell's loop and "
                 "scan); its row's impl reads 'CELL/IMPL (reference)'; empty: none",
    "ratio_to_reference": "ms_median over the reference's in the same point",
    "matmul_only_ms": "lyrics_epoch: the epoch's matmuls run alone",
    "epoch_over_matmuls": "lyrics_epoch: the epoch's time over its matmuls' time alone",
    "ratio_to_book": "lyrics_epoch: ms_median over the book's code's",
    "time_shares": "whether each impl was also profiled (torch.profiler) for where its time goes",
    **{f"share_{b.replace(' ', '_').replace('-', '_')}": f"share of the profiled wall time in {b} (gradlab.timeshare)" for b in BUCKETS},
}


@dataclass
class Config:
    workload: str = "cell"
    cell: str = "lstm"
    impls: tuple[str, ...] = ("scratch", "cudnn")  # timed in one point, interleaved, so a drift in speed hits all alike
    seq_len: int = 100  # fastrnns' shape: T 100, B 64, I = H = 512
    batch_size: int = 64
    hidden_size: int = 512
    input_size: int | None = None  # None: equal to hidden_size
    mode: str = "forward+backward"
    dtype: str = "float32"
    device: str = "cpu"
    repeats: int = 10
    warmup: int = 3
    noise_retries: int = 2  # a point whose timings are noise is timed again, up to this many times
    seed: int = 0
    time_shares: bool = False  # also profile each impl (gradlab.timeshare): where its time goes
    optimizer: str = "rmsprop"  # train_step: the long-range studies' optimiser and clipping (Arjovsky et al. 2016)
    lr: float = 1e-3
    clip: str = "norm:1"
    reference: str = ""  # CELL/IMPL timed beside the point's impls (workload cell): another cell's kernel on the same data

    def reference_cell(self) -> tuple[str, str] | None:
        """(cell, impl) of the reference, or None."""
        if not self.reference:
            return None
        cell, _, impl = self.reference.partition("/")
        return cell, impl

    def validate(self) -> None:
        lookup({w: w for w in WORKLOADS}, self.workload, "workload")
        if not self.impls:
            raise ValueError("impls is empty: name the impls to time, e.g. impls=[\"scratch\", \"cudnn\"] (gradlab list: impls).")
        lookup({m: m for m in MODES}, self.mode, "mode")
        lookup(DTYPES, self.dtype, "dtype")
        if self.workload == "train_step":
            from ..training.clipping import parse_clip
            from ..training.optimizers import make_optimizer

            for impl in self.impls:
                check(self.cell, impl)
            make_optimizer(self.optimizer, [torch.zeros(1, requires_grad=True)], self.lr)
            parse_clip(self.clip)
        elif self.workload == "cell":
            for impl in self.impls:
                if impl == GRAPHED:
                    if not str(self.device).startswith("cuda") or self.mode != "forward+backward":
                        raise ValueError(f"impl {GRAPHED!r} captures a CUDA graph of forward+backward: it needs device cuda.")
                else:
                    check(self.cell, impl)
        elif self.cell not in ("gru", "lstm"):
            raise ValueError(f"the lyrics epoch compares with the book's code, which has gru and lstm, not {self.cell!r}.")
        for name in ("seq_len", "batch_size", "hidden_size", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        check_device(self.device)
        check_fits(self.cell, self.hidden_size, self.input_size or self.hidden_size, self.seq_len, self.batch_size, self.dtype, self.device)
        if self.reference:
            if "/" not in self.reference or self.workload != "cell":
                raise ValueError(f"reference names CELL/IMPL (e.g. lstm/cudnn), timed beside workload cell's impls; got {self.reference!r} "
                                 f"for workload {self.workload!r}.")
            cell, impl = self.reference_cell()
            check(cell, impl, init="xavier", hidden_size=self.hidden_size)
            check_fits(cell, self.hidden_size, self.input_size or self.hidden_size, self.seq_len, self.batch_size, self.dtype, self.device)
        if self.noise_retries < 0:
            raise ValueError(f"noise_retries must be >= 0, got {self.noise_retries}.")
        if self.warmup < 0 or (self.input_size is not None and self.input_size < 1):
            raise ValueError("warmup must be >= 0 and input_size >= 1 (or none).")


def _layer_call(cfg: Config, impl: str, x: torch.Tensor, cell_name: str | None = None):
    """A function running one forward (and backward) of a fresh layer (of cfg.cell, or `cell_name`), and the layer."""
    base = "scratch" if impl == GRAPHED else impl
    cell = create(cell_name or cfg.cell, base, x.shape[-1], cfg.hidden_size, init="xavier", seed=cfg.seed, dtype=x.dtype, device=x.device)
    backward = cfg.mode == "forward+backward"

    def call() -> None:
        if backward:
            cell.zero_grad(set_to_none=False)
            out, _ = cell(x)
            out.sum().backward()
        else:
            with torch.no_grad():
                cell(x)

    if impl != GRAPHED:
        return call, cell
    stream = torch.cuda.Stream()  # warm up on a side stream, then capture (PyTorch's whole-network recipe)
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    return graph.replay, cell


def _train_step_call(cfg: Config, impl: str, batch, spec=None):
    """One optimiser step of a fresh model on the adding task (spec: its Spec, built here when not given), as
    training.loop.train takes it, and its cell."""
    from ..tasks import build
    from ..training.clipping import parse_clip
    from ..training.loop import train_step
    from ..training.model import build_model
    from ..training.optimizers import make_optimizer

    spec = spec or build("adding", {}).spec
    model = build_model(spec, cfg.cell, impl, cfg.hidden_size, seed=cfg.seed, dtype=batch.x.dtype, device=batch.x.device, init="uniform")
    params = list(model.parameters())
    opt, clipper = make_optimizer(cfg.optimizer, params, cfg.lr), parse_clip(cfg.clip)

    def call() -> None:
        train_step(model, spec, batch, None, opt, clipper, params, measure_update=True)

    return call, model.cell


def _cell_rows(cfg: Config) -> list[dict]:
    device, dtype = torch.device(cfg.device), getattr(torch, cfg.dtype)
    gen = torch.Generator().manual_seed(cfg.seed)
    calls, cells = {}, {}
    if cfg.workload == "train_step":  # the adding task's own inputs: (value, marker) pairs, I = 2
        from ..tasks import build

        task = build("adding", {})
        batch = task.sample(gen, cfg.batch_size, cfg.seq_len, device)
        batch.x, batch.y = batch.x.to(dtype), batch.y.to(dtype)
        I = batch.x.shape[-1]
        for impl in cfg.impls:
            calls[impl], cells[impl] = _train_step_call(cfg, impl, batch, task.spec)
    else:
        I = cfg.input_size or cfg.hidden_size
        x = torch.randn(cfg.seq_len, cfg.batch_size, I, generator=gen, dtype=torch.float64).to(device, dtype)  # (T, B, I)
        for impl in cfg.impls:
            calls[impl], cells[impl] = _layer_call(cfg, impl, x)
        if cfg.reference:
            ref_cell, ref_impl = cfg.reference_cell()
            calls[REFERENCE.format(cfg.reference)], cells[REFERENCE.format(cfg.reference)] = _layer_call(cfg, ref_impl, x, ref_cell)
    peak_mem = {}
    if device.type == "cuda":
        for impl, call in calls.items():
            torch.cuda.reset_peak_memory_stats()
            call()
            sync(device)
            peak_mem[impl] = torch.cuda.max_memory_allocated()
    times, attempts = timed_until_quiet(calls, device, cfg.repeats, cfg.warmup, cfg.noise_retries)
    peak = matmul_peak(device, dtype)
    backward = cfg.mode == "forward+backward" or cfg.workload == "train_step"
    rows = []
    for impl, ts in times.items():
        flops = flops_of(cfg.reference_cell()[0] if impl.endswith(" (reference)") else cfg.cell, cfg.seq_len, cfg.batch_size, I, cfg.hidden_size, backward)
        q1, _, q3 = statistics.quantiles(ts, n=4) if len(ts) > 1 else (ts[0], ts[0], ts[0])
        seconds, relative = statistics.median(ts), spread(ts)
        rows.append({"impl": impl, "ms_median": seconds * 1e3, "ms_iqr": (q3 - q1) * 1e3, "spread": relative,
                     "noisy": relative > NOISY_SPREAD, "attempts": attempts, "tokens_per_s": cfg.seq_len * cfg.batch_size / seconds,
                     "flops": flops, "gflops": flops / seconds / 1e9, "peak_gflops": peak / 1e9, "peak_fraction": flops / seconds / peak,
                     "peak_mem_bytes": peak_mem.get(impl, float("nan")), "backend": cells[impl].last_backend + ("+graph" if impl == GRAPHED else "")})
    if cfg.time_shares and device.type == "cpu":  # after the timings: the profiler's overhead never reaches them
        for r in rows:
            shares = time_shares(calls[r["impl"]], repeats=3, warmup=1)
            r.update({f"share_{b.replace(' ', '_').replace('-', '_')}": shares[b] for b in BUCKETS})
    twin = next((i for i in family(cfg.cell).impls if i != "scratch"), None)
    rows = [r | {"twin": twin} for r in rows]
    reference = next((r for r in rows if r["impl"].endswith(" (reference)")), None)
    if reference is not None:
        rows = [r | {"ratio_to_reference": float("nan") if r["noisy"] or reference["noisy"] else r["ms_median"] / reference["ms_median"]} for r in rows]
    fused = next((r for r in rows if r["impl"] == twin), None)
    if fused is None or fused["noisy"]:  # a ratio to noise is no ratio
        return [r | {"ratio_to_fused": float("nan")} for r in rows]
    return [r | {"ratio_to_fused": float("nan") if r["noisy"] else r["ms_median"] / fused["ms_median"]} for r in rows]


REFERENCE = "{} (reference)"  # the reference's impl in the table: 'lstm/cudnn (reference)'


def flops_of(cell: str, seq_len: int, batch_size: int, input_size: int, hidden_size: int, backward: bool) -> int:
    """Matmul FLOPs of one layer of the cell (timing.layer_flops for the classic cells; the modern cells have no recurrent
    matmul: cells.modern.layer_flops)."""
    if family(cell).diagonal:
        return modern_layer_flops(cell, seq_len, batch_size, input_size, hidden_size, backward)
    return layer_flops(cell, seq_len, batch_size, input_size, hidden_size, backward)


NOISY_SPREAD = 0.5  # IQR over median above this: the timing is noise (quiet runs: at most 0.22 on the 2-core CPU, 0.29 on an H200)


def spread(times: list[float]) -> float:
    """Interquartile range over median of one impl's timed runs."""
    if len(times) < 2:
        return 0.0
    q1, median, q3 = statistics.quantiles(times, n=4)
    return (q3 - q1) / median


def timed_until_quiet(calls: dict, device, repeats: int, warmup: int, retries: int) -> tuple[dict[str, list[float]], int]:
    """Interleaved timings of every call, timed again (up to `retries` times) while any impl's spread says
    noise; the quietest attempt is kept. Returns it and how many attempts were made."""
    best, attempts = None, 0
    for attempts in range(1, retries + 2):
        times = interleaved_times(calls, device, repeats, warmup)
        worst = max(spread(ts) for ts in times.values())
        if best is None or worst < best[0]:
            best = (worst, times)
        if worst <= NOISY_SPREAD:
            break
    return best[1], attempts


def _epoch_rows(cfg: Config) -> list[dict]:
    """The book's lyrics epoch (hidden 256, 35 steps, batch 32, vocabulary 1,027) on a text of the book's
    shape: gradlab's scratch model against the book's code, and the epoch's matmuls alone."""
    from ..baselines.speed import book_config, book_shaped_text, compare_epoch_speed, epoch_matmul_seconds
    from ..tasks.lyrics import Lyrics

    task = Lyrics.from_text(book_shaped_text())
    train_cfg = book_config(cell=cfg.cell, device=cfg.device)
    speed = compare_epoch_speed(train_cfg, task, cfg.repeats)
    matmuls = epoch_matmul_seconds(train_cfg, task, cfg.repeats)
    tokens = speed["batches_per_epoch"] * train_cfg.seq_len * train_cfg.batch_size
    rows = []
    for who in ("gradlab", "book"):
        seconds = speed[f"{who}_seconds_per_epoch"]
        rows.append({"impl": who, "ms_median": seconds * 1e3, "ms_iqr": float("nan"), "tokens_per_s": tokens / seconds,
                     "flops": speed[f"{who}_flops_per_epoch"], "gflops": speed[f"{who}_flops_per_epoch"] / seconds / 1e9,
                     "peak_gflops": speed["matmul_peak_flops"] / 1e9, "peak_fraction": speed[f"{who}_peak_fraction"],
                     "peak_mem_bytes": float("nan"), "backend": "python-loop",
                     "ratio_to_book": seconds / speed["book_seconds_per_epoch"],
                     "matmul_only_ms": matmuls * 1e3 if who == "gradlab" else float("nan"),
                     "epoch_over_matmuls": seconds / matmuls if who == "gradlab" else float("nan")})
    return rows


def run(cfg: Config, progress: bool = False) -> dict[str, list[dict]]:
    torch.manual_seed(cfg.seed)
    return {"results": _epoch_rows(cfg) if cfg.workload == "lyrics_epoch" else _cell_rows(cfg)}


from ..derived.throughput import derive  # noqa: E402,F401  (tables made from the rows; outside the source digest)
