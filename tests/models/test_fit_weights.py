"""fit_classifier's sample_weights: None and all-ones train identically; weight 0 is leaving a
sample out; the weighted loss is sum(w * ce) / sum(w) per batch; bad weights are refused."""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as fn
from torch.utils.data import TensorDataset

from trustfast.models.fit import SGDConfig, fit_classifier


def _data(n=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    return x, y


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


SGD = SGDConfig(epochs=3, lr=0.1, momentum=0.9, weight_decay=1e-3, batch_size=8)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_all_ones_weights_train_as_none(schedule):
    x, y = _data()
    data = TensorDataset(x, y)
    a, b = _model(), _model()
    la = fit_classifier(a, data, SGD, seed=3, schedule=schedule)
    lb = fit_classifier(b, data, SGD, seed=3, schedule=schedule,
                        sample_weights=torch.ones(len(data)))
    # Same batches (the shuffle is the same) and the same mean: equal to float rounding.
    torch.testing.assert_close(_params(a), _params(b), atol=1e-6, rtol=1e-6)
    assert la == pytest.approx(lb, rel=1e-6)


def test_zero_weight_is_leaving_the_sample_out():
    # One batch holding the whole data: the shuffled order changes only the summation order.
    x, y = _data(20)
    sgd = SGDConfig(epochs=4, lr=0.2, momentum=0.9, weight_decay=1e-3, batch_size=64)
    w = torch.ones(20)
    w[[3, 11]] = 0.0
    keep = w > 0
    a, b = _model(1), _model(1)
    la = fit_classifier(a, TensorDataset(x, y), sgd, seed=0, sample_weights=w)
    lb = fit_classifier(b, TensorDataset(x[keep], y[keep]), sgd, seed=0)
    torch.testing.assert_close(_params(a), _params(b), atol=1e-6, rtol=1e-5)
    assert la == pytest.approx(lb, rel=1e-5)


def test_weighted_loss_is_normalised_weighted_mean():
    # One full-batch step of plain SGD against the formula sum(w * ce) / sum(w).
    x, y = _data(10)
    w = torch.linspace(0.0, 2.0, 10)
    sgd = SGDConfig(epochs=1, lr=0.5, momentum=0.0, weight_decay=0.0, batch_size=16)
    a = _model(2)
    ref = copy.deepcopy(a)
    losses = fit_classifier(a, TensorDataset(x, y), sgd, seed=0, sample_weights=w)
    loss = (w * fn.cross_entropy(ref(x), y, reduction="none")).sum() / w.sum()
    loss.backward()
    with torch.no_grad():
        for p in ref.parameters():
            p -= 0.5 * p.grad
    torch.testing.assert_close(_params(a), _params(ref), atol=1e-6, rtol=1e-5)
    assert losses[0] == pytest.approx(float(loss.detach()), rel=1e-5)


def test_weights_follow_the_shuffled_indices():
    # A large weight on one sample pulls the model toward it whatever batch it lands in: with
    # weights tracked by index, the weighted run differs from the unweighted one and equals
    # training on data where that sample is repeated (full batch: order-free).
    x, y = _data(12)
    sgd = SGDConfig(epochs=3, lr=0.1, momentum=0.0, weight_decay=0.0, batch_size=32)
    w = torch.ones(12)
    w[5] = 3.0
    a, b = _model(4), _model(4)
    fit_classifier(a, TensorDataset(x, y), sgd, seed=1, sample_weights=w)
    rep = torch.cat([torch.arange(12), torch.tensor([5, 5])])
    fit_classifier(b, TensorDataset(x[rep], y[rep]), sgd, seed=1)
    torch.testing.assert_close(_params(a), _params(b), atol=1e-6, rtol=1e-5)


def test_extra_item_fields_are_ignored():
    x, y = _data(16)
    groups = torch.arange(16) % 3
    a, b = _model(), _model()
    fit_classifier(a, TensorDataset(x, y), SGD, seed=0)
    fit_classifier(b, TensorDataset(x, y, groups), SGD, seed=0)
    assert torch.equal(_params(a), _params(b))
    c = _model()
    fit_classifier(c, TensorDataset(x, y, groups), SGD, seed=0, sample_weights=torch.ones(16))
    torch.testing.assert_close(_params(a), _params(c), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("weights, err, match", [
    (torch.ones(5), ValueError, "sample_weights must have shape"),
    (torch.ones(16, dtype=torch.long), TypeError, "sample_weights must be a floating"),
    (-torch.ones(16), ValueError, "sample_weights must lie in"),
    (torch.full((16,), float("nan")), ValueError, "sample_weights must be finite"),
    (torch.zeros(16), ValueError, "sample_weights must not all be 0"),
    ([1.0] * 16, TypeError, "sample_weights must be a torch.Tensor"),
])
def test_bad_weights_are_refused(weights, err, match):
    x, y = _data(16)
    with pytest.raises(err, match=match):
        fit_classifier(_model(), TensorDataset(x, y), SGD, sample_weights=weights)


def test_batch_of_zero_weights_takes_no_step():
    # The loader's first batch gets weight 0: the run equals one step on the second batch
    # alone (with weight decay on, a step on a zero loss would still move the weights).
    x, y = _data(16)
    sgd = SGDConfig(epochs=1, lr=0.1, momentum=0.9, weight_decay=0.1, batch_size=8)
    order = torch.utils.data.DataLoader(torch.arange(16), batch_size=8, shuffle=True,
                                        generator=torch.Generator().manual_seed(5))
    first, second = list(order)
    w = torch.ones(16)
    w[first] = 0.0
    a, b = _model(3), _model(3)
    la = fit_classifier(a, TensorDataset(x, y), sgd, seed=5, sample_weights=w)
    lb = fit_classifier(b, TensorDataset(x[second], y[second]), sgd, seed=0)
    torch.testing.assert_close(_params(a), _params(b), atol=1e-6, rtol=1e-5)
    assert la == pytest.approx(lb, rel=1e-5)
