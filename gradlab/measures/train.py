"""A model trained on a task: learning curves and held-out loss against the task's memoryless baseline,
per-step telemetry, and the task's own tables (generated text for lyrics)."""

from __future__ import annotations

import pandas as pd

from ..names import TASKS
from ..tasks import task_class
from ..training import TrainConfig, train, with_task_params
from . import COMMON_COLUMNS

COLUMNS = COMMON_COLUMNS | {
    # settings
    "task": "what the model learns (gradlab list: tasks)",
    "optimizer": "sgd, adam, adamw or rmsprop", "lr": "learning rate (at the start, under a schedule)",
    "lr_now": "the learning rate in force at the evaluation",
    "embedding": "width of a learned embedding of token ids before the cell; 0: the cell's own projection of one-hot ids",
    "tie": "the output layer's weights are the embedding's", "dropout_embedding": "locked dropout on the embedded inputs (one mask per sequence)",
    "dropout_chars": "share of characters whose whole embedding is dropped, per batch", "dropout_output": "locked dropout on the cell's outputs",
    "weight_drop": "DropConnect on the recurrent weights (scratch cells)", "weight_decay": "the optimiser's weight decay (decoupled for adamw)",
    "label_smoothing": "share of the training target put on the uniform distribution (the held-out losses are plain cross-entropy)",
    "lr_schedule": "constant, cosine (to 0 over the steps) or plateau (halved after 2 evaluations without a better held-out loss)",
    "clip": "clipping strategy: none, norm:THETA (global norm), value:THETA (element-wise)",
    "steps": "optimiser steps asked for", "eval_every": "steps between evaluations on the held-out set",
    "solve_fraction": "solved (adding, and a task judged by its loss): held-out loss below this fraction of the memoryless loss of the held-out data",
    "solve_error": "solved (copy, recall: tasks judged by their answers with gradlab's line): under this share of the answers wrong (temporal order: Pascanu et al.'s 1%, fixed)",
    "stop_when_solved": "whether a run stops once its validation set meets the task's rule with stop_margin to spare",
    "stop_margin": "the share of the rule's threshold the validation set must reach to stop a run (1: the rule itself; 0.5: half its line, so that the kept model is not one at its first dip)",
    "eval_size": "validation (held-out) sequences of a synthetic task: they choose the kept checkpoint, stop a run and choose the learning rate",
    "eval_seed": "seed of the validation sequences",
    "test_size": "fresh test sequences of a synthetic task, read once by the kept model: the verdict (0: no test set, the verdict from validation)",
    "test_seed": "the test set's stream: its generator is seeded with tasks.base.fresh_test_stream(test_seed), a seed no training or validation stream may take",
    "n_symbols": "symbols to remember (copy, recall)", "copy_len": "symbols copied (copy)",
    "n_distractors": "distractor alphabet size (recall)", "sampling": "lyrics: consecutive or random batches",
    "setting": "lyrics: book (first 10,000 characters) or full training text",
    "val_fraction": "lyrics: share of the corpus's lines held out", "corpus": "lyrics: the corpus path given, if any",
    "prefixes": "lyrics: prefixes text is generated from", "pred_len": "lyrics: characters generated per prefix",
    "sample_temperature": "lyrics: temperature of the sampled text (greedy text is drawn too)",
    # per evaluation (results) and per step (steps)
    "step": "optimiser steps taken", "epoch": "lyrics: epochs completed (results), epoch of the step (steps)",
    "train_loss": "mean training loss over the last epoch (lyrics) or since the last evaluation (nats, or MSE)",
    "val_loss": "validation (held-out) loss (nats per scored target, or MSE); NaN once diverged",
    "val_metric": "accuracy (0-1), MSE, or perplexity (lyrics), on the held-out set",
    "baseline": "the task's memoryless baseline: the loss of the best predictor that ignores the past",
    "grad_norm": "median global gradient L2 norm before clipping, over the steps since the last evaluation",
    "grad_norm_pre": "global gradient L2 norm before clipping", "grad_norm_post": "after clipping (median, in results)",
    "clipped": "whether clipping changed the gradient", "clip_rate": "share of steps clipped since the last evaluation",
    "seconds": "training seconds (a step, or the steps since the last evaluation); in an ensemble, the member's share of each batched step",
    "ensemble_size": "models trained together in the batched pass that ran this one (1: solo)",
    "diverged": "a non-finite loss or gradient ended the run", "train_ppl": "lyrics: exp(train_loss)",
    "val_ppl": "lyrics: held-out perplexity over in-vocabulary targets",
    # per run (runs, final)
    "parameters": "trainable parameters", "steps_done": "optimiser steps taken", "steps_per_epoch": "lyrics: batches per epoch",
    "diverged_step": "the step whose loss or gradient was not finite",
    "solved_step": "validation: the first evaluation step at which the task's success rule held on the validation set (selection's; the verdict is test_solved)",
    "left_step": "validation: the first evaluation step with validation loss under 0.9 x its baseline (left the baseline)",
    "stopped_solved_step": "the step at which the validation set met the rule with stop_margin to spare and the run stopped (empty: it did not)",
    "kept_step": "the step of the kept model (best: the lowest validation loss; last: the run's last evaluation): the model tested, and steps to solve",
    "val_solved": "validation: the task's rule held on the validation set at the kept checkpoint (what the choice of a learning rate reads)",
    "val_steps_to_solve": "validation: the kept checkpoint's step where val_solved",
    "kept_val_loss_ratio": "the kept model's validation loss over the memoryless loss of the validation set",
    "verdict_from": "the set the verdict (solved, steps_to_solve) was read on: test (a fresh test set) or validation (a run without one)",
    "rules_beside": "rules kept beside the verdict, each with its columns' prefix (adding, hs: Hochreiter and Schmidhuber 1997's per-sequence rule)",
    "val_hs_error_rate": "adding: share of the validation sequences answered 0.08 or more from their sum (Hochreiter and Schmidhuber 1997's 0.04 on their scale)",
    "hs_solved": "adding: Hochreiter and Schmidhuber 1997's rule held on validation at this evaluation (under 1 in 2,000 sequences wrong)",
    "test_baseline": "the memoryless loss of the test set itself (the best predictor that ignores the past, on the same test targets)",
    "test_baseline_rel_se": "its relative standard error (0: exact whatever the draw)",
    "test_loss_ratio": "test_loss / test_baseline: the kept model's test loss over the memoryless loss of the test set",
    "test_error_rate": "share of the test answers wrong (1 - test accuracy); empty where the metric is not an accuracy",
    "test_solved": "the verdict: the task's success rule held on the fresh test set, for the kept model",
    "test_left_baseline": "the kept model's test loss under 0.9 x the memoryless loss of the test set",
    "test_hs_error_rate": "adding: share of the test sequences answered 0.08 or more from their sum (Hochreiter and Schmidhuber 1997's 0.04 on their scale)",
    "test_hs_solved": "adding: Hochreiter and Schmidhuber 1997's rule on the test set: under 1 in 2,000 test sequences wrong",
    "test_seconds": "seconds to read the test set (in chunks, once)", "test_sequences": "sequences in the test set read",
    "val_sequences": "sequences in the validation set (a synthetic task)",
    "baseline_theory": "the task's memoryless loss in theory (the data's own is 'baseline')",
    "baseline_rel_se": "relative standard error of the held-out data's memoryless loss (0: exact whatever the draw)",
    "success_rule": "when a run of this task counts as solved, and whose rule that is",
    "lag_meaning": "what seq_len (T) means for how far back the task reaches",
    "loss_ratio": "val_loss / baseline (the memoryless loss of the same validation data)",
    "error_rate": "share of validation answers wrong (1 - accuracy); NaN where the metric is not an accuracy",
    "left_baseline": "loss under 0.9 x the memoryless loss of the same data (Arjovsky et al. 2016 beat it and draw no line; the 0.9 margin is gradlab's): "
                     "at this validation evaluation (results); the kept model on the test set, or at some validation evaluation for a run without one (final)",
    "steps_to_leave": "the first step it did", "seeds_left_of": "seeds that left the baseline / seeds run", "left_rate": "share of the seeds that left the baseline",
    "seeds_censored": "seeds that did not solve within their budget (steps): counted as beyond it in steps_to_solve_median",
    "train_seconds": "training seconds in all (evaluation excluded)", "train_chars": "lyrics: training characters",
    "vocab_size": "lyrics: characters in the vocabulary", "val_lines": "lyrics: held-out lines never seen in training",
    "val_lines_dropped_as_seen": "lyrics: held-out lines dropped because the training text holds them",
    "val_chars": "lyrics: held-out characters", "val_oov_chars": "lyrics: held-out characters outside the vocabulary",
    "val_targets": "lyrics: held-out next-character targets", "val_targets_scored": "lyrics: of them, in the vocabulary (scored once each)",
    "val_targets_oov": "lyrics: of them, outside the vocabulary (read as context, not scored)",
    "unigram_entropy": "lyrics: entropy of the training characters (nats): the baseline",
    "final_train_loss": "train_loss at the last evaluation", "final_val_loss": "val_loss at the last evaluation",
    "best_val_loss": "lowest val_loss of the run", "loss_over_baseline": "final_val_loss / baseline (1: no better than ignoring the past)",
    "solved": "the task's success rule held: on validation at this evaluation (results); the verdict (final and the tables): on the fresh test set for the kept model (test_solved), on validation for a run without a test set",
    "steps_to_solve": "the verdict's step: the kept checkpoint's step where the test set says solved (a run without a test set: its first solved validation evaluation)",
    "lr_selected": "whether the row's learning rate is the one its setting (task, cell, forget bias, every setting but lr, lag and seed) chose on validation (derived.train.select_lr)",
    "val_seeds_solved_of": "seeds solved on validation / seeds run", "seeds_hs_solved_of": "adding: seeds solved by Hochreiter and Schmidhuber 1997's rule on the test set / seeds run",
    "test_loss_ratio_median": "median test_loss_ratio over the seeds", "test_loss_ratio_q25": "its 25% quantile", "test_loss_ratio_q75": "its 75% quantile",
    "val_seeds_solved": "per lag tried: seeds solved on validation / seeds run", "val_longest_lag_solved": "longest_lag_solved on validation (what the choice of a learning rate reads)",
    "val_solved_total": "lr_selection: seeds solved on validation over every lag tried",
    "val_steps_to_solve_median": "lr_selection: median over seeds of the validation steps to solve at the longest lag solved on validation (one that did not solve: beyond its budget)",
    "val_loss_ratio_shortest": "lr_selection: median kept_val_loss_ratio over seeds at the shortest lag tried",
    "rank": "lr_selection: the rate's place by the rule (1: chosen)",
    "lrs_tried": "tuned: the learning rates tried", "reference_lr": "tuned: the rate of the untuned profile, 3e-3 (empty: not tried)",
    "longest_lag_at_reference_lr": "tuned: longest_lag_solved (test) at the reference rate",
    "seeds_solved_at_reference_lr": "tuned: seeds solved per lag (test) at the reference rate",
    "longest_lag_by_lr": "tuned: longest_lag_solved (test) at every rate tried", "val_longest_lag_by_lr": "tuned: the same on validation (what the choice read)",
    "seconds_per_epoch": "lyrics: training seconds per epoch",
    "clip_threshold": "the norm (value: element) bound in force at the step; NaN without clipping",
    "clip_cosine": "cosine between the clipped and the unclipped gradient (1: direction kept)",
    "update_norm": "||delta theta||: how far the optimiser's step moved the parameters",
    "steps_run": "optimiser steps the run took", "fraction_clipped": "share of its steps clipped",
    "median_grad_norm": "median gradient norm before clipping", "median_threshold": "median threshold in force",
    "threshold_over_norm": "median threshold / median gradient norm: the threshold relative to the typical norm",
    "min_cosine": "smallest cosine of a clipped step", "median_cosine": "median cosine of the clipped steps",
    "median_update_norm": "median ||delta theta||", "max_update_norm": "largest ||delta theta||",
    "loss_spikes": "steps whose loss exceeded 3 x the median of the previous 50",
    "diverged_reason": "what ended a diverged run",
    "lags_tried": "the seq_len values run with these settings", "seeds_solved": "per lag tried: seeds solved / seeds run",
    "longest_lag_solved": "the longest seq_len (steps) solved by most of its seeds, every shorter lag tried solved too; empty: none",
    "solved_above_failure": "lags solved by most seeds above a lag that was not (shown, not counted in longest_lag_solved)",
    "seeds": "seeds run with these settings", "seeds_solved_of": "seeds solved / seeds run", "solved_rate": "share of the seeds that solved",
    "steps_to_solve_median": "median steps to solve over every seed, one that did not solve counted as beyond its budget (inf: fewer than half solved)",
    "steps_to_solve_min": "fewest steps to solve",
    "steps_to_solve_max": "most steps to solve (of the seeds that solved)",
    "loss_over_baseline_median": "median final held-out loss / baseline over the seeds that did not diverge",
    "loss_over_baseline_q25": "its 25% quantile", "loss_over_baseline_q75": "its 75% quantile",
    "seeds_diverged": "seeds whose run diverged",
    "because": "skipped: why the study's ladder did not run the point", "seq_len_not_run": "the lags the ladder did not run for the setting",
    "points": "points of the setting the ladder did not run",
    "probe_steps": "steps at which the gradient flow is measured (0: at initialisation)",
    "probe_size": "held-out sequences the gradient-flow probe uses",
    "wrt": "flow: the state part the gradient is taken with respect to (h, or c for the LSTM)",
    "t": "flow: step index of the held-out sequence",
    "distance": "steps back: from the sequence's last step (flow), from the predicted character (context_grads)",
    "input_grad_norm": "context_grads: ||dL/dz|| for the input that many characters back (z: its row of W_x), RMS over positions",
    "band": "by_frequency: the band of training-text counts of the target character; by_distance: the band of characters back to the last earlier occurrence of the target's context (never: none)",
    "count_from": "by_frequency: the band's lowest count",
    "targets": "by_frequency, by_distance: scored held-out targets in the band", "share": "by_frequency, by_distance: the band's share of the scored targets",
    "net_loss": "by_frequency, by_distance: the network's mean loss in the band (the held-out text read as one stream)",
    "ngram_loss": "by_frequency, by_distance: the modified Kneser-Ney n-gram's mean loss in the band (by_distance: the 5-gram)", "ngram_order": "by_frequency: the n-gram's order",
    "distance_from": "by_distance: the band's fewest characters back from the target to the last earlier occurrence of its context (0: never occurred)",
    "context_chars": "by_distance: the characters before the target whose last earlier occurrence is looked for (4: the 5-gram's context)",
    "cache_loss": "by_distance: the network's mean loss in the band with its neural cache (eval_modes cache) (nats)",
    "dynamic_loss": "by_distance: the network's mean loss in the band under dynamic evaluation (eval_modes dynamic) (nats)",
    "ngram_cache_loss": "by_distance: the modified Kneser-Ney 5-gram with its cache of the held-out text: mean loss in the band (nats)",
    "mix_loss": "by_distance: the network mixed with the 5-gram and its cache (eval_modes mix): mean loss in the band (nats)",
    "gap_part": "by_frequency: the band's part of the mean loss gap, network - n-gram (the parts add up to the gap)",
    "split": "context: held out or training text; by_frequency, by_distance: the held-out text read (test, or validation without a test text)", "k": "context: characters the model saw before the one it predicts",
    "positions": "context: predicted characters scored (the same for every k)",
    "loss": "training loss of the step; context: mean next-character loss (nats) with k characters of context",
    "effective_context": "the smallest k (inputs) from which every longer context's loss is within 1% of the full-context loss (two-sided)",
    "longest_context": "the longest k tried", "loss_longest": "loss (nats) with the longest context", 
    "context_lengths": "the k (inputs) of the context analysis after training (empty: none)",
    "context_positions": "scored targets of each text the context analysis uses (a fixed draw)",
    "eval_modes": "after training, the kept model's held-out texts read as one stream with long context (gradlab.evaluation), each mode's settings chosen on validation: "
                  "cache (Grave et al. 2017's neural cache), dynamic (Krause et al. 2018's dynamic evaluation), mix (the network mixed with the Kneser-Ney 5-gram and its cache); empty: none",
    "dropout": "share of the cell's outputs zeroed while training (not the recurrence); 0: none",
    "patience": "early stopping: evaluations without a new best held-out loss before the run ends; 0: never",
    "keep_best": "whether the run ends with the parameters of its best held-out evaluation (tested, analysed)",
    "text_split": "lyrics: tail (the last lines held out) or blocks (held-out blocks, validation and test)",
    "block_lines": "lyrics, split blocks: lines per block",
    "eval_streams": "lyrics: parallel streams the held-out texts are scored as, each from a zero state (0: batch_size; 1: one stream, as the n-grams)",
    "best_step": "the evaluation step with the lowest held-out loss", "kept": "best or last: the parameters the run ended with",
    "stopped_early_step": "the step at which patience ended the run (empty: it did not)",
    "test_loss": "loss of the kept model on the test set (a synthetic task's fresh test sequences; lyrics, split blocks: the test blocks)",
    "test_metric": "its metric (accuracy, MSE; lyrics: perplexity)",
    "test_ppl": "lyrics: test perplexity of the kept model", "test_lines": "lyrics: test lines never seen in training",
    "test_chars": "lyrics: test characters", "test_targets_scored": "lyrics: test targets in the vocabulary (scored once each)",
    "test_unigram_loss": "lyrics: the unigram baseline's loss on the test text (nats)",
    "probe": "context: truncate (a zero state before the last k inputs), shuffle or replace (the earlier inputs permuted, or another sequence's)",
    "loss_full": "context: mean loss of the same targets with the model's full context", "items": "context: targets scored",
    "shuffle_context": "the smallest k from which shuffling the earlier inputs keeps the loss within 1% of the full-context loss",
    "replace_context": "the same for replacing them with another sequence's", "loss_shortest": "loss with the fewest k tried",
    "state_grad_norm": "flow: ||dL/dh_t|| (or the total ||dL/dc_t||, the path through h_t included) for the task's loss, RMS over the probed sequences",
    # samples
    "prefix": "lyrics: the prefix", "temperature": "lyrics: 0 for greedy text", "text": "lyrics: prefix and generated text",
}

COLUMNS |= {f"{split}_{kind}{n}_loss": f"lyrics: mean -ln P of the {text} targets under an interpolated Kneser-Ney {n}-gram fitted on the "
            f"training text ({'one discount, 0.75' if kind == 'kn' else 'modified: Chen and Goodman discounts'}); the counting baseline"
            for split, text in (("val", "validation"), ("test", "test")) for kind in ("kn", "mkn") for n in (2, 3, 4, 5)}

COLUMNS |= {f"{split}_{kind}{n}cache_loss": f"lyrics: mean -ln P (nats) of the {text} targets under the {kind}{n} n-gram with a cache of the held-out text (Kuhn and De Mori 1990): "
            f"mixed with unigram to 5-gram distributions counted over its last 1,000 characters, each target scored before it joins, weights by EM on "
            f"the validation text (one set per count of cache orders whose context is in the cache; under split tail chosen on the text scored)"
            for split, text in (("val", "validation"), ("test", "test")) for kind in ("kn", "mkn") for n in (2, 3, 4, 5)}
COLUMNS |= {
    "mkn5cache_weights": "lyrics: the mkn5 cache mixture's weights by count m of cache orders defined: 'm: static 5-gram, unigram cache, ..., m-gram cache'",
    "ngram_cache_window": "lyrics: characters of held-out text the n-gram caches hold", "ngram_cache_orders": "lyrics: the orders of the n-gram caches",
    "val_stream_loss": "eval_modes: the kept network's validation loss, the text read as one stream from its start (nats)",
    "test_stream_loss": "eval_modes: its test loss read as one stream (the plain network beside the modes) (nats)",
    "val_cache_loss": "eval_modes cache: validation loss with Grave et al.'s neural cache at the settings chosen on it (nats)", "test_cache_loss": "eval_modes cache: test loss with the neural cache (nats)",
    "cache_theta": "eval_modes cache: the chosen inverse temperature theta of exp(theta h_t . h_i)", "cache_window": "eval_modes cache: the chosen characters looked back",
    "cache_lambda": "eval_modes cache: the chosen share of the cache in the mixture", "cache_seconds": "eval_modes cache: seconds to choose and score it",
    "val_dynamic_loss": "eval_modes dynamic: validation loss under dynamic evaluation (each segment scored, then a gradient step on it) at the settings chosen on it (nats)",
    "test_dynamic_loss": "eval_modes dynamic: test loss under dynamic evaluation (nats)",
    "dynamic_rule": "eval_modes dynamic: the chosen update, sgd or rms (Krause et al.'s step divided by the training text's RMS gradient)",
    "dynamic_lr": "eval_modes dynamic: the chosen rate (0: no rate helped, the plain network)",
    "dynamic_decay": "eval_modes dynamic: the chosen decay toward the trained weights per step (rms: scaled per weight by its RMS gradient over the mean)", "dynamic_segment": "eval_modes dynamic: characters per segment (one step each)",
    "dynamic_clip": "eval_modes dynamic: the global norm each segment's gradient is clipped to",
    "dynamic_seconds": "eval_modes dynamic: seconds to choose (a grid on validation) and score it",
    "val_dynamic_cache_loss": "eval_modes cache and dynamic: validation loss of dynamic evaluation with a neural cache over the adapted model's states (its own theta, window, lambda chosen on it) (nats)",
    "test_dynamic_cache_loss": "eval_modes cache and dynamic: test loss of dynamic evaluation with a neural cache (nats)",
    "dynamic_cache_theta": "eval_modes cache and dynamic: the chosen theta of that cache", "dynamic_cache_window": "eval_modes cache and dynamic: its chosen window",
    "dynamic_cache_lambda": "eval_modes cache and dynamic: its chosen share", "dynamic_cache_seconds": "eval_modes cache and dynamic: seconds to choose and score that cache",
    "dynamic_cache_loss": "by_distance: the network's mean loss in the band under dynamic evaluation with a neural cache (nats)",
    "val_mix_loss": "eval_modes mix: validation loss of the network mixed with the modified Kneser-Ney 5-gram and its cache (weights by EM on it) (nats)",
    "test_mix_loss": "eval_modes mix: test loss of that mixture (nats)", "mix_net": "eval_modes mix: the network's weight",
    "mix_ngram": "eval_modes mix: the static 5-gram's weight", "mix_ngram_cache": "eval_modes mix: the cached 5-gram's weight", "mix_seconds": "eval_modes mix: seconds",
    "stream_seconds": "eval_modes: seconds to read the held-out texts as one stream",
    "eval_best_mode": "eval_modes: plain, cache, dynamic or dynamic_cache, whichever has the lowest validation loss (mix is not a network alone)",
    "val_best_loss": "eval_modes: the validation loss of that mode (nats)", "test_best_loss": "eval_modes: the test loss of the mode best on validation (nats)",
}


def __getattr__(name: str):
    """Config: TrainConfig with every task's parameters, made when first asked for (not while this module is imported,
    so that a plugin task's import, which may fail or hang, never runs inside gradlab's own imports)."""
    if name == "Config":
        config = globals().get("_Config") or with_task_params(TrainConfig)
        globals()["Config"] = globals()["_Config"] = config
        return config
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def preflight(configs: list) -> None:
    """Checks that need a task's data (the lyrics corpus found, the prefixes in its vocabulary; a plugin task's
    data finite), made once per distinct task before any work: one clear error, not a failure per point."""
    seen = set()
    for cfg in configs:
        task = cfg.make_task()
        key = (repr(task), cfg.batch_size, cfg.seq_len)
        if key not in seen and hasattr(task, "ready"):
            task.ready(cfg.batch_size, cfg.seq_len)
        if key not in seen and cfg.task not in TASKS:
            check_finite_data(task, cfg.task, cfg.seq_len)
        seen.add(key)


def check_finite_data(task, name: str, length: int) -> None:
    """A plugin task's data holds numbers only: a NaN or an infinity in its inputs or targets is refused, with what
    was found (a training on them would record NaN losses as if the model diverged)."""
    import torch

    from ..tasks import SyntheticTask

    if not isinstance(task, SyntheticTask):
        return
    batch = task.sample(torch.Generator().manual_seed(0), 4, length)
    for what, values in (("inputs", batch.x), ("targets", batch.y)):
        if values.is_floating_point() and not bool(torch.isfinite(values).all()):
            bad = values[~torch.isfinite(values)]
            raise ValueError(f"task {name!r} (a plugin) gives {int(bad.numel())} non-finite values ({', '.join(sorted({str(float(v)) for v in bad[:50]}))}) "
                             f"in its {what} at seq_len {length} (a batch of 4 drawn with seed 0): gradlab trains only on numbers. Mend the task's sample().")


ARTIFACTS = ("weights",)  # point tables kept in points/ for later analyses, never stacked into the run's tables


def tables_of(result, cfg) -> dict[str, list[dict]]:
    tables = {"results": result.history, "steps": result.steps, "runs": [result.run], **result.tables}
    usable = not result.run.get("diverged") or result.run.get("kept") == "best"  # a diverged run keeps no model, unless its best
    if result.model is not None and usable and getattr(task_class(cfg.task), "keeps_weights", False):
        tables["weights"] = weights_rows(result.model)
    return tables


def weights_rows(model) -> list[dict]:
    """The model's parameters and buffers as rows (name, shape, dtype, the values' bytes): a point's 'weights' table."""
    import json

    return [{"name": name, "shape": json.dumps(list(t.shape)), "dtype": str(t.dtype).removeprefix("torch."),
             "data": t.detach().cpu().contiguous().numpy().tobytes()} for name, t in model.state_dict().items()]


def load_weights(model, rows) -> None:
    """The kept weights (a point's 'weights' table) into a model made from the same config."""
    import json

    import numpy as np
    import torch

    state = {}
    for row in (rows.to_dict("records") if hasattr(rows, "to_dict") else rows):
        values = np.frombuffer(row["data"], dtype=getattr(np, row["dtype"])).reshape(json.loads(row["shape"]))
        state[row["name"]] = torch.from_numpy(values.copy())
    model.load_state_dict(state)


def reanalyse(config: dict, tables: dict) -> dict[str, list[dict]] | None:
    """A finished point's analyses made again from its kept weights, by today's code (the context probe, the
    task's own analysis: lyrics' input gradients and by-frequency table; the kept model's sampled text, in place of
    the rows its evaluation drew; the evaluation modes, with their columns of the runs row and the by_distance table),
    without training: the tables they replace. None: the point kept no weights."""
    import torch

    from ..training.loop import context_tables, evaluating, model_of

    if "weights" not in tables or not len(tables["weights"]):
        return None
    cfg = __getattr__("Config")(**config)  # this module's Config (made on first use)
    task = cfg.validate()
    if hasattr(task, "ready"):
        task.ready(cfg.batch_size, cfg.seq_len)
    device = torch.device(cfg.device if cfg.device == "cpu" or torch.cuda.is_available() else "cpu")
    model = model_of(cfg, task, device)
    load_weights(model, tables["weights"])
    held_out = task.held_out(cfg.batch_size, cfg.seq_len, device)
    again: dict[str, list[dict]] = {}
    with evaluating(model):
        if cfg.context_lengths:
            again |= context_tables(model, task, held_out, cfg)
        if "samples" in tables and len(tables["results"]):  # the kept model's own evaluation: its text drawn again
            results, run = pd.DataFrame(tables["results"]), pd.DataFrame(tables["runs"]).iloc[0]
            at = results[results["step"] == run["best_step"]] if run.get("kept") == "best" else results.tail(1)
            row = at.iloc[-1].to_dict() if len(at) else None
            drawn = task.observe(model, row, cfg.seed).get("samples", []) if row is not None else []
            samples = pd.DataFrame(tables["samples"])
            if drawn and "step" in samples:  # the rows that evaluation drew, replaced in place (tables from before samples named their step: kept)
                rows, step = samples.to_dict("records"), drawn[0]["step"]
                first = next((i for i, r in enumerate(rows) if r["step"] == step), len(rows))
                rows = [r for r in rows if r["step"] != step]
                again["samples"] = rows[:first] + drawn + rows[first:]
    if cfg.eval_modes and hasattr(task, "long_context"):  # the held-out texts read with long context again: the runs row's columns and by_distance
        extras, tables_again = task.long_context(model, tuple(cfg.eval_modes))
        again |= tables_again | {"runs": [row | extras for row in pd.DataFrame(tables["runs"]).to_dict("records")]}
    return again


def run(cfg, progress: bool = False) -> dict[str, list[dict]]:
    result = train(cfg, progress=progress)
    result.run["ensemble_size"] = 1
    return tables_of(result, cfg)


def ensemble_reason(cfg) -> str | None:
    """Why this point cannot train in an ensemble (it runs solo), or None."""
    from ..training.ensemble import solo_reason

    return solo_reason(cfg)


def ensemble_key(cfg) -> tuple:
    """Points with equal keys can train as one ensemble."""
    from ..training.ensemble import shape_key

    return shape_key(cfg)


def run_ensemble(cfgs: list, progress: bool = False) -> list[dict[str, list[dict]]]:
    """Every config trained as a member of one batched ensemble: each point's tables, as its solo run's."""
    from ..training.ensemble import train_ensemble

    return [tables_of(result, cfg) for result, cfg in zip(train_ensemble(cfgs, progress), cfgs)]


def succeeded(tables: dict) -> bool:
    """The ladder's test: a run succeeded when either set says it solved its task (by the task's own rule): the fresh
    test set (test_solved, the verdict) or the validation set at some evaluation (solved_step, what selection reads).
    Either, so that a lag the ladder leaves out is one neither the verdict nor the selection of a learning rate would
    have counted: neither set's longest lag is cut short by the other's failures."""
    runs = pd.DataFrame(tables["runs"])
    test = runs["test_solved"].fillna(False).astype(bool) if "test_solved" in runs else pd.Series(False, index=runs.index)
    return bool((runs["solved_step"].notna() | test).any())


from ..derived.train import derive  # noqa: E402,F401  (tables made from the rows; outside the source digest)
