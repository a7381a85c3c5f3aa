"""Issue 17 (reliability): the unlearning and pruning API refuses bad input with an error naming
the argument, and never writes NaN/Inf into a model (configs, unlearn(), masks, metrics)."""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trustfast.config import ConfigError
from trustfast.sparsity import global_magnitude_masks, mask_sparsity, masks_from_scores
from trustfast.unlearn import (
    CONFIGS,
    FFConfig,
    GAConfig,
    IUConfig,
    L1SparseConfig,
    RetrainConfig,
    RLConfig,
    SalUnConfig,
    TrainConfig,
    accuracy,
    apply_masks,
    classwise,
    disparity_average,
    evaluate,
    from_indices,
    imp,
    magnitude_masks,
    omp,
    random_fraction,
    saliency_mask,
    synflow,
    unlearn,
)

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))


def tiny_data(n: int = 12, seed: int = 0, scale: float = 1.0) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 4, 4, generator=gen) * scale
    y = torch.arange(n) % 3
    return TensorDataset(x, y)


def tiny_splits(train: TensorDataset | None = None):
    train = tiny_data() if train is None else train
    return from_indices(train, tiny_data(6, seed=1), [0, 1, 2, 3])


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed"


# ------------------------------------------------------------------------------------ configs

BAD_FIELDS = [
    (TrainConfig, "epochs", 0), (TrainConfig, "epochs", -1), (TrainConfig, "lr", 0.0),
    (TrainConfig, "lr", -0.1), (TrainConfig, "momentum", 1.0), (TrainConfig, "weight_decay", -1),
    (TrainConfig, "batch_size", 0), (TrainConfig, "seed", -1), (TrainConfig, "lr", math.nan),
    (TrainConfig, "lr", "fast"), (TrainConfig, "epochs", 2.5),
    (GAConfig, "epochs", -1), (GAConfig, "lr", math.inf), (RetrainConfig, "epochs", 0),
    (RLConfig, "lr", -1e-3), (L1SparseConfig, "l1", -1e-4), (L1SparseConfig, "l1", math.nan),
    (SalUnConfig, "saliency", 0.0), (SalUnConfig, "saliency", 1.5),
    (FFConfig, "alpha", -1e-6), (FFConfig, "alpha", 0.0), (FFConfig, "max_variance", 0.0),
    (FFConfig, "samples", 0), (FFConfig, "batch_size", 0), (FFConfig, "seed", -1),
    (IUConfig, "alpha", 0.0), (IUConfig, "samples", 0), (IUConfig, "damping", 0.0),
    (IUConfig, "damping", -1.0), (IUConfig, "inverse", "cholesky"), (IUConfig, "batch_size", 0),
    (IUConfig, "seed", -2),
]


@pytest.mark.parametrize("cls, key, value", BAD_FIELDS,
                         ids=[f"{c.__name__}.{k}={v!r}" for c, k, v in BAD_FIELDS])
def test_every_method_config_field_is_validated_when_made(cls, key, value):
    with pytest.raises(ConfigError, match=rf"^{key} must be"):
        cls(**{key: value})


def test_configs_coerce_yaml_strings():
    assert GAConfig(lr="1e-4", epochs="2").lr == 1e-4
    assert FFConfig(alpha="1e-7").alpha == 1e-7
    assert set(CONFIGS) == {"retrain", "ft", "ga", "rl", "ff", "iu", "l1_sparse", "salun"}


def test_a_config_changed_in_place_is_checked_again_by_unlearn():
    model, splits = tiny_model(), tiny_splits()
    before = state(model)
    cfg = FFConfig(samples=8)
    cfg.alpha = -1e-6  # the reproducer wrote 2570 NaN weights
    with pytest.raises(ConfigError, match="alpha must be > 0"):
        unlearn(model, splits, "ff", config=cfg)
    cfg = GAConfig()
    cfg.epochs = -1  # silently did nothing
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        unlearn(model, splits, "ga", config=cfg)
    assert_unchanged(model, before)


# --------------------------------------------------------------------------- unlearn()'s arguments

def test_unlearn_refuses_bad_arguments():
    model, splits = tiny_model(), tiny_splits()
    before = state(model)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        unlearn(lambda x: x, splits, "ft")
    with pytest.raises(TypeError, match="splits must be a trustfast.unlearn.Splits"):
        unlearn(model, (tiny_data(), tiny_data(), tiny_data()), "ft")
    with pytest.raises(ValueError, match="method must be one of"):
        unlearn(model, splits, "finetune")
    with pytest.raises(TypeError, match="method must be one of"):
        unlearn(model, splits, 3)
    with pytest.raises(TypeError, match="config for 'ga' must be GAConfig"):
        unlearn(model, splits, "ga", config=FFConfig())
    loader_splits = tiny_splits()
    loader_splits.retain = DataLoader(loader_splits.retain, batch_size=4)
    with pytest.raises(TypeError, match=r"splits.retain must be a map-style Dataset.*\.dataset"):
        unlearn(model, loader_splits, "ft")
    empty = tiny_splits()
    empty.forget = TensorDataset(torch.zeros(0, 1, 4, 4), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="splits.forget and splits.retain must be non-empty"):
        unlearn(model, empty, "ft")
    assert_unchanged(model, before)


@pytest.mark.parametrize("mask, error, pattern", [
    ({"1.weight": torch.full((3, 16), 0.5)}, ValueError, r"mask\['1.weight'\] must hold only 0"),
    ({"1.weight": torch.ones(16, dtype=torch.bool)}, ValueError, r"mask\['1.weight'\] must have "
                                                                 r"shape \(3, 16\)"),
    ({"1.weight": torch.ones(3, 16, dtype=torch.long)}, TypeError, r"mask\['1.weight'\] must be "
                                                                   r"a bool or floating"),
    ({"nope": torch.ones(3, dtype=torch.bool)}, ValueError, r"mask name parameters .*nope"),
    ([torch.ones(3, 16, dtype=torch.bool)], TypeError, "mask must be a mapping"),
])
def test_unlearn_refuses_bad_masks_before_touching_the_model(mask, error, pattern):
    model = tiny_model()
    before = state(model)
    with pytest.raises(error, match=pattern):
        unlearn(model, tiny_splits(), "ff", mask=mask, config=FFConfig(samples=4))
    assert_unchanged(model, before)


def test_unlearn_refuses_a_model_that_already_holds_nan():
    model = tiny_model()
    with torch.no_grad():
        model[1].weight[0, 0] = math.nan
    with pytest.raises(ValueError, match=r"model has NaN/Inf values in 1.weight"):
        unlearn(model, tiny_splits(), "ff", config=FFConfig(samples=4))


# ------------------------------------------------------------------ nothing non-finite written

def test_ff_with_nan_retain_data_refuses_and_leaves_weights_unchanged():
    train = tiny_data()
    train.tensors[0][5, 0, 0, 0] = math.nan  # a retain sample: its gradient (and F) is NaN
    model = tiny_model()
    before = state(model)
    with pytest.raises(ValueError, match="FF: the Fisher diagonal .* NaN/Inf"):
        unlearn(model, tiny_splits(train), "ff", config=FFConfig(samples=None))
    assert_unchanged(model, before)


def test_ff_with_a_zero_fisher_adds_capped_finite_noise():
    # all-zero inputs: the Fisher of every weight is exactly 0 (alpha / F = inf before the cap)
    train = TensorDataset(torch.zeros(12, 1, 4, 4), torch.arange(12) % 3)
    model = tiny_model()
    before = model[1].weight.detach().clone()
    unlearn(model, tiny_splits(train), "ff", config=FFConfig(samples=None, max_variance=1e-4))
    w = model[1].weight.detach()
    assert torch.isfinite(w).all()
    assert (w - before).abs().max() <= 10 * math.sqrt(1e-4)  # the capped variance's scale


def test_iu_with_a_degenerate_hessian_refuses_and_leaves_weights_unchanged():
    # damping 1e-300 is > 0 but underflows float32: F^-1 v = v / damping is Inf
    model = tiny_model()
    before = state(model)
    with pytest.raises(ValueError, match="IU: the weight update has .* NaN/Inf"):
        unlearn(model, tiny_splits(), "iu", config=IUConfig(samples=4, damping=1e-300))
    assert_unchanged(model, before)


def test_a_nan_batch_is_skipped_and_leaves_batch_norm_statistics_finite():
    from trustfast._meta import TrustfastWarning

    train = tiny_data()
    train.tensors[0][7] = math.nan  # a retain sample: its batch's loss and BN statistics
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm2d(1), nn.Flatten(), nn.Linear(16, 3))
    with pytest.warns(TrustfastWarning, match="NaN/Inf loss"):
        unlearn(model, tiny_splits(train), "ft", config=TrainConfig(epochs=2, batch_size=4))
    for k, v in model.state_dict().items():
        assert torch.isfinite(v.float()).all(), k


class _FailsOnSecondCall(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = tiny_model()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("boom")
        return self.net(x)


def test_an_error_mid_way_restores_the_model():
    model = _FailsOnSecondCall()
    before = state(model)
    with pytest.raises(RuntimeError, match="boom"):
        unlearn(model, tiny_splits(), "ft", config=TrainConfig(epochs=1, batch_size=2))
    assert_unchanged(model, before)  # the first step's update was rolled back


def test_unlearn_runs_and_keeps_a_float_0_1_mask():
    model = tiny_model()
    mask = {"1.weight": (torch.arange(48).view(3, 16) % 2).float()}
    unlearn(model, tiny_splits(), "ff", mask=mask, config=FFConfig(samples=8))
    w = model[1].weight.detach()
    assert torch.isfinite(w).all() and (w[mask["1.weight"] == 0] == 0).all()


# --------------------------------------------------------------------------------- pruning masks

def test_apply_masks_refuses_a_float_mask_that_is_not_0_1():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    with pytest.raises(ValueError, match=r"masks\['weight'\] must hold only 0 and 1.*0.5"):
        apply_masks(model, {"weight": torch.tensor([[0.5, 1.0], [1.0, 0.0]])})
    assert model.weight.detach().tolist() == [[1.0, 2.0], [3.0, 4.0]]  # nothing written
    with pytest.raises(ValueError, match=r"masks\['weight'\] must have shape \(2, 2\)"):
        apply_masks(model, {"weight": torch.ones(1, 2, dtype=torch.bool)})  # no broadcasting
    apply_masks(model, {"weight": torch.tensor([[0.0, 1.0], [1.0, 0.0]])})
    assert model.weight.detach().tolist() == [[0.0, 2.0], [3.0, 0.0]]
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        apply_masks({"weight": model.weight}, {})


@pytest.mark.parametrize("value, error", [("0.5", TypeError), (None, TypeError),
                                          (True, TypeError), (1.0, ValueError),
                                          (-0.1, ValueError), (math.nan, ValueError)])
def test_numeric_arguments_name_themselves(value, error):
    model = tiny_model()
    with pytest.raises(error, match="sparsity must be"):
        magnitude_masks(model, sparsity=value)
    with pytest.raises(error, match="sparsity must be"):
        omp(model, value, lambda m, k: None)
    with pytest.raises(error, match="sparsity must be"):
        imp(model, value, lambda m, k: None)
    with pytest.raises(error, match="sparsity must be"):
        synflow(model, value, (1, 4, 4))


def test_pruning_arguments_are_checked():
    model = tiny_model()
    with pytest.raises(ValueError, match="rate must be a number > 0 and < 1"):
        imp(model, 0.5, lambda m, k: None, rate=1.0)
    with pytest.raises(TypeError, match="retrain must be a callable"):
        omp(model, 0.5, "retrain")
    with pytest.raises(TypeError, match="rounds must be an integer"):
        synflow(model, 0.5, (1, 4, 4), rounds=2.5)
    with pytest.raises(ValueError, match=r"input_shape\[1\] must be an integer >= 1"):
        synflow(model, 0.5, (1, 0, 4))
    with pytest.raises(TypeError, match="input_shape must be a non-empty tuple"):
        synflow(model, 0.5, 16)
    with pytest.raises(ValueError, match=r"current\['1.weight'\] must hold only 0 and 1"):
        global_magnitude_masks(model, 0.5, current={"1.weight": torch.full((3, 16), 0.3)})
    with pytest.raises(ValueError, match=r"masks\['a'\] must hold only 0 and 1"):
        mask_sparsity({"a": torch.tensor([0.2, 1.0])})
    with pytest.raises(ValueError, match=r"scores\['w'\] must lie in \[0, inf\]"):
        masks_from_scores({"w": torch.tensor([0.1, math.nan])}, 0.5,
                          {"w": torch.ones(2, dtype=torch.bool)})
    nan_model = tiny_model()
    with torch.no_grad():
        nan_model[1].weight[0, 0] = math.nan
    with pytest.raises(ValueError, match="1.weight holds NaN"):
        magnitude_masks(nan_model, 0.5)


def test_saliency_mask_arguments_and_nan_gradients():
    model, data = tiny_model(), tiny_data()
    with pytest.raises(ValueError, match="fraction must be a number > 0 and <= 1"):
        saliency_mask(model, data, 0.0)
    with pytest.raises(TypeError, match="fraction must be a number"):
        saliency_mask(model, data, "half")
    with pytest.raises(TypeError, match="forget must be a map-style Dataset"):
        saliency_mask(model, DataLoader(data), 0.5)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        saliency_mask(model, data, 0.5, batch_size=0)
    data.tensors[0][0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="saliency: the forget-loss gradient has NaN/Inf"):
        saliency_mask(model, data, 0.5)


# ---------------------------------------------------------------------------- splits and metrics

def test_splits_and_metrics_name_their_arguments():
    train, test = tiny_data(), tiny_data(6, seed=1)
    with pytest.raises(TypeError, match="fraction must be a number"):
        random_fraction(train, test, "0.1")
    with pytest.raises(ValueError, match="fraction must be a number > 0 and < 1"):
        random_fraction(train, test, 1.0)
    with pytest.raises(TypeError, match="forget_class must be an integer"):
        classwise(train, test, 1.5)
    with pytest.raises(TypeError, match=r"indices\[1\] must be an integer"):
        from_indices(train, test, [0, 1.5])
    with pytest.raises(TypeError, match="train must be a map-style Dataset"):
        from_indices(DataLoader(train), test, [0])
    model = tiny_model()
    with pytest.raises(TypeError, match="dataset must be a map-style Dataset"):
        accuracy(model, DataLoader(train))
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        accuracy(model, train, batch_size=0)
    with pytest.raises(TypeError, match="splits must be a trustfast.unlearn.Splits"):
        evaluate(model, {"forget": train})
    with pytest.raises(TypeError, match=r"row\['UA'\] must be a number"):
        disparity_average({"UA": "1", "RA": 1, "TA": 1, "MIA": 1},
                          {"UA": 1, "RA": 1, "TA": 1, "MIA": 1})
