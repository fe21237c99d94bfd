"""Each broken change below must fail the tests named beside it: applied one at a time to the checkout,
the tests run, the change undone. Prints one line per mutation; exits 1 if any survives.

python scripts/mutation_check.py [SUBSTRING]   (only the mutations whose name holds SUBSTRING)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (name, file, the text, what it becomes, the tests that must fail)
MUTATIONS = [
    ("matmul_peak n^3/t", "gradlab/timing.py", "return 2 * n**3 / seconds", "return n**3 / seconds",
     "tests/test_summaries.py::test_matmul_peak_is_two_flops_per_multiply_add"),
    ("longest_lag smallest solved", "gradlab/derived/train.py", "float(longest.max())", "float(longest.min())",
     "tests/test_summaries.py -k longest_lag"),
    ("longest_lag any seed", "gradlab/derived/train.py", 'per_lag["sum"] > per_lag["count"] / 2', 'per_lag["sum"] > 0',
     "tests/test_summaries.py -k longest_lag"),
    ("longest_lag counts a lag above a failed one", "gradlab/derived/train.py", "unbroken = majority.cummin()", "unbroken = majority",
     "tests/test_summaries.py -k longest_lag"),
    ("steps to solve: mean, not median", "gradlab/derived/train.py", 'float(steps.median()) if len(steps)', 'float(steps.mean()) if len(steps)',
     "tests/test_summaries.py -k by_setting"),
    ("loss over baseline counts diverged seeds", "gradlab/derived/train.py", 'g.loc[~diverged, "loss_over_baseline"]', 'g["loss_over_baseline"].fillna(0)',
     "tests/test_summaries.py -k by_setting"),
    ("clip_rate 1.0", "gradlab/training/loop.py", '"clip_rate": sum(r["clipped"] for r in window) / len(window)', '"clip_rate": 1.0',
     "tests/test_summaries.py::test_the_history_row_takes_the_median_norm_and_the_share_clipped"),
    ("history grad_norm max", "gradlab/training/loop.py", "statistics.median(finite) if finite", "max(finite) if finite",
     "tests/test_summaries.py::test_the_history_row_takes_the_median_norm_and_the_share_clipped"),
    ("fraction_clipped 0", "gradlab/derived/train.py", '"fraction_clipped": float(g["clipped"].mean())', '"fraction_clipped": 0.0',
     "tests/test_summaries.py::test_the_clipping_table_counts_clipped_steps_and_spikes"),
    ("loss_spikes 0", "gradlab/derived/train.py", '"loss_spikes": int((g["loss"] > SPIKE * running).sum())', '"loss_spikes": 0',
     "tests/test_summaries.py::test_the_clipping_table_counts_clipped_steps_and_spikes"),
    ("lyrics baseline from held-out text", "gradlab/tasks/text.py", '"unigram_entropy": unigram_entropy(train_text)',
     '"unigram_entropy": unigram_entropy(val_text)', "tests/test_summaries.py::test_the_lyrics_baseline_is_the_training_texts_unigram_entropy"),
    *[(f"{part} out of the source digest", "gradlab/env.py", 'NOT_NUMBERS = ("report/", "derived/", "cli.py")',
       f'NOT_NUMBERS = ("report/", "derived/", "cli.py", "{part}")', "tests/test_runner.py -k digest")
      for part in ("training/", "measures/", "cells/", "probes.py")],
    ("cached points trusted without checksums", "gradlab/store.py", "if not path.exists() or file_digest(path) != digest:",
     "if not path.exists():", "tests/test_folder.py -k damaged"),
    ("no lock", "gradlab/folder.py", "                if host == me[\"host\"] and _may_be_running(holder, me[\"host\"]):",
     "                if False:", "tests/test_folder.py -k two_runs"),
    ("divergence at 10 x guessing", "gradlab/training/loop.py", "DIVERGE_GUESSES = 3.0", "DIVERGE_GUESSES = 10.0",
     "tests/test_training.py -k divergence_rule"),
    ("noise quoted as a ratio", "gradlab/measures/throughput.py", '"ratio_to_fused": float("nan") if r["noisy"] else',
     '"ratio_to_fused":', "tests/test_throughput.py -k noise"),
    ("ladder: one seed failing fails the lag", "gradlab/ladder.py", '"passed" if any(r is True for r in results)', '"passed" if all(r is True for r in results)',
     "tests/test_ladder.py::test_one_seed_that_solves_breaks_the_streak"),
    ("ladder never waits", "gradlab/ladder.py", 'elif _streak(below, ladder.stop_after, ("failed", "open")):', "elif False:",
     "tests/test_ladder.py::test_a_lag_waits_while_shorter_unfinished_ones_could_make_a_streak"),
    ("runner ignores the ladder", "gradlab/runner.py", "if verdicts[i][0] == RUN and i not in busy]", "if i not in busy]",
     "tests/test_ladder.py::test_in_a_pool_a_longer_lag_waits_for_the_shorter_ones"),
    ("runner runs what the ladder skips", "gradlab/runner.py", "pending = [i for i in pending if verdicts[i][0] != SKIP]", "pass",
     "tests/test_ladder.py::test_a_run_computes_only_what_the_ladder_lets_through_and_says_what_it_left_out"),
    ("flow: the c tap before h reads c", "gradlab/flow.py", "        return torch.sigmoid(o) * torch.tanh(c), c",
     "        return torch.sigmoid(o) * torch.tanh(c.detach()), c", "tests/test_flow.py -k stacked"),
    ("flow: GRU mixes the other way", "gradlab/flow.py", "return (1 - z) * n + z * h, None", "return z * n + (1 - z) * h, None",
     "tests/test_flow.py -k torch_nns_outputs"),
    ("flow: norms not RMS over the batch", "gradlab/flow.py", "norms = _rms_norms([g] if t is not None else list(g.unbind(0))).tolist()",
     "norms = (_rms_norms([g] if t is not None else list(g.unbind(0))) * 2).tolist()", "tests/test_flow.py -k stacked"),
    ("recorder records every call", "gradlab/flow.py", "return (self.seen[name] - 1) % self.every == 0", "return True",
     "tests/test_flow.py -k recorder_records"),
    ("plugin code out of its points' keys", "gradlab/runner.py", '        keyed["plugins"] = plugins', "        pass",
     "tests/test_plugins.py -k keys"),
    ("figures wider than the page", "gradlab/report/figures.py", "    w = min(width, (PAGE_IN - 0.7) / cols)", "    w = width * 1.4",
     "tests/test_figures.py -k fits"),
    ("colours by sorted value, not by cell", "gradlab/report/figures.py", "    if values and all(c is not None for c in fixed.values()):",
     "    if False:", "tests/test_figures.py -k one_colour"),
    ("divergences not marked", "gradlab/report/figures.py", '                broken_at.append((ax, ends[x].to_numpy(), ends[y].to_numpy(), colours[h]))',
     "                pass", "tests/test_figures.py -k diverged_at_step_3"),
    ("temporal order windows by floor", "gradlab/tasks/temporal_order.py", "return -(-k * length // 10)", "return k * length // 10",
     "tests/test_tasks.py::test_temporal_order_positions_and_classes"),
    ("an ensemble keeps members that ended", "gradlab/training/ensemble.py", "active = [run for run in active if run.running]",
     "active = [run for run in active if run.step < run.cfg.steps]", "tests/test_ensemble.py -k diverges"),
    ("an ensemble's members share one data stream", "gradlab/training/ensemble.py", "batches = [run.next_batch() for run in active]  #",
     "batches = [active[0].next_batch()] * len(active)  #", "tests/test_ensemble.py -k float64"),
    ("the batched weight gradient of the first model for all", "gradlab/cells/bptt.py",
     "return torch.bmm(per_model(h_prevs).mT, per_model(grad_a))", "return torch.bmm(per_model(h_prevs).mT, per_model(grad_a))[:1].expand(h0.shape[0], -1, -1)",
     "tests/test_ensemble.py -k gradcheck"),
    ("an ensemble's bias gradient summed over the models too", "gradlab/training/ensemble.py", "return grad, per_model(grad).sum(1)",
     "return grad, per_model(grad).sum(1).sum(0, keepdim=True).expand(grad.shape[1], -1)", "tests/test_ensemble.py -k token"),
    ("ensembles off when asked for auto", "gradlab/grouping.py", "return not self.auto and self.largest <= 1", "return self.largest <= 1",
     "tests/test_ensemble.py -k runner"),
]


def main(only: str = "") -> int:
    survived = 0
    for name, rel, old, new, tests in MUTATIONS:
        if only not in name:
            continue
        path = ROOT / rel
        original = path.read_text(encoding="utf-8")
        if original.count(old) != 1:
            print(f"STALE   {name}: {rel} holds {original.count(old)} copies of the text to mutate")
            survived += 1
            continue
        path.write_text(original.replace(old, new), encoding="utf-8")
        try:
            done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests.split()],
                                  cwd=ROOT, capture_output=True, text=True)
        finally:
            path.write_text(original, encoding="utf-8")
        caught = done.returncode == 1
        survived += not caught
        print(f"{'caught ' if caught else 'SURVIVED'} {name}: {tests}" + ("" if caught else f" (exit {done.returncode})"))
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ""))
