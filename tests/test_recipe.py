"""What a small character model needs to beat counting (the lyrics 'counting' profile): a learned embedding, tied
input and output weights, locked dropout, dropped characters, weight drop, weight decay and schedules: parameter
counts, gradients, every dropout off in evaluation, and none of it in the book's runs."""

from __future__ import annotations

import pytest
import torch

from gradlab.tasks.base import Spec
from gradlab.training.model import Regularisation, build_model, locked_dropout

V, H = 11, 6
SPEC = Spec(input="tokens", input_size=V, output_size=V, loss="cross_entropy", metric="perplexity")


def test_a_tied_embedding_models_parameters_and_gradient():
    """Tied: (V + 1) x H embedding (the unknown id's row all zeros), the cell's input projection from H, a bias; no
    output matrix. Its embedding's gradient is what an untied twin's embedding and output matrix get, added."""
    tied = build_model(SPEC, "gru", "scratch", H, seed=1, dtype=torch.float64, embedding=H, tie=True)
    untied = build_model(SPEC, "gru", "scratch", H, seed=1, dtype=torch.float64, embedding=H)
    cell = sum(p.numel() for p in tied.cell.parameters())
    assert cell == 3 * (H * H + H * H + H) + H  # GRU from H inputs: W_x*, W_h*, b_* and b_hh
    assert sum(p.numel() for p in tied.parameters()) == (V + 1) * H + cell + V
    assert sum(p.numel() for p in untied.parameters()) == (V + 1) * H + cell + H * V + V
    with torch.no_grad():
        untied.W_hq.copy_(untied.embed.weight[:V].T)
    x = torch.randint(0, V + 1, (7, 3))  # the unknown id V among them
    y = torch.randint(0, V, (7, 3))
    losses = [torch.nn.functional.cross_entropy(m(x)[0].reshape(-1, V), y.reshape(-1)) for m in (tied, untied)]
    assert float(losses[0]) == pytest.approx(float(losses[1]), rel=1e-12)
    for loss in losses:
        loss.backward()
    want = untied.embed.weight.grad.clone()
    want[:V] += untied.W_hq.grad.T
    torch.testing.assert_close(tied.embed.weight.grad, want, rtol=1e-10, atol=1e-13)
    assert torch.equal(tied.embed.weight[V], torch.zeros(H, dtype=torch.float64))  # the unknown id reads nothing


def test_locked_dropout_keeps_one_mask_for_every_step():
    torch.manual_seed(0)
    x = torch.ones(9, 4, 5)
    out = locked_dropout(x, 0.5)
    assert torch.equal(out, out[:1].expand_as(out)) and set(out.unique().tolist()) <= {0.0, 2.0}


def test_every_new_dropout_is_off_in_evaluation_and_on_in_training():
    reg = Regularisation(embedding=0.3, chars=0.3, output=0.3, weights=0.5)
    model = build_model(SPEC, "lstm", "scratch", H, seed=2, dtype=torch.float64, embedding=4, regularisation=reg)
    plain = build_model(SPEC, "lstm", "scratch", H, seed=2, dtype=torch.float64, embedding=4)
    x = torch.randint(0, V, (8, 3))
    model.eval()
    plain.eval()
    torch.testing.assert_close(model(x)[0], plain(x)[0], rtol=0, atol=0)  # evaluation: exactly the plain model
    model.train()
    torch.manual_seed(3)
    a = model(x)[0]
    torch.manual_seed(4)
    assert not torch.allclose(a, model(x)[0])  # training: masks drawn


def test_none_of_it_is_in_the_books_runs():
    from gradlab.measures.train import Config
    from gradlab.study import expand, load_study, resolve

    off = {"embedding": 0, "tie": False, "dropout_embedding": 0.0, "dropout_chars": 0.0, "dropout_output": 0.0, "weight_drop": 0.0,
           "weight_decay": 0.0, "lr_schedule": "constant", "label_smoothing": 0.0}
    study = load_study("lyrics")
    for profile in ("book", "context", "full", "generalise"):
        points, _ = expand(resolve(study, Config, profile), Config)
        assert all({k: getattr(p, k) for k in off} == off for p in points), profile


@pytest.mark.parametrize("bad, said", [
    ({"tie": True, "embedding": 8}, "embedding must equal hidden_size"),
    ({"dropout_chars": 0.1}, "act on a learned embedding"),
    ({"weight_drop": 0.2, "impl": "cudnn"}, "weight_drop masks the recurrent weights of the scratch cells"),
    ({"lr_schedule": "cosin"}, "Did you mean 'cosine'"),
    ({"embedding": 8, "task": "adding"}, "embedding embeds token ids"),
    ({"label_smoothing": 0.1, "task": "adding"}, "label_smoothing smooths class targets"),
    ({"label_smoothing": 1.0}, r"label_smoothing must be in \[0, 1\)"),
    ({"task": "lyrics", "eval_streams": -1, "seq_len": 35}, "eval_streams must be >= 0"),
])
def test_settings_that_cannot_work_together_are_refused(bad, said):
    from gradlab.measures.train import Config

    with pytest.raises(ValueError, match=said):
        Config(**({"task": "copy", "hidden_size": 16} | bad)).validate()


def test_label_smoothing_is_the_training_objective_only_and_the_loss_reported_stays_plain():
    """The gradient is that of (1 - e) x cross-entropy + e x the mean over classes of -log p, written out here
    over the scored targets (an IGNORE target left out); the loss the step returns is plain cross-entropy."""
    from gradlab.tasks.base import IGNORE, Batch
    from gradlab.training.clipping import parse_clip
    from gradlab.training.loop import train_step

    e = 0.2
    x = torch.randint(0, V, (7, 3), generator=torch.Generator().manual_seed(5))
    y = torch.randint(0, V, (7, 3), generator=torch.Generator().manual_seed(6))
    y[2, 1] = IGNORE
    model = build_model(SPEC, "gru", "scratch", H, seed=1, dtype=torch.float64, embedding=H, tie=True)
    twin = build_model(SPEC, "gru", "scratch", H, seed=1, dtype=torch.float64, embedding=H, tie=True)
    logp = torch.log_softmax(twin(x)[0], -1)[y != IGNORE]  # (n, V)
    kept = y[y != IGNORE]
    nll = -logp.gather(1, kept[:, None]).squeeze(1)
    want = ((1 - e) * nll - e * logp.mean(1)).mean()
    want.backward()
    sgd = torch.optim.SGD(model.parameters(), lr=0.0)  # no step: the gradients are compared as left
    loss, *_ = train_step(model, SPEC, Batch(x, y), None, sgd, parse_clip("none"), list(model.parameters()), label_smoothing=e)
    assert loss == pytest.approx(float(nll.mean()), rel=1e-12)
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-13, msg=name)
