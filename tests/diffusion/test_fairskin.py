"""FairSkin's three levels: known answers for the sampling probabilities, the loss weights and
the real + synthetic mix; empirical sampler frequencies against the formula; determinism by
(seed, epoch); the within-cell diversity penalty's value and gradient; the config's pieces."""

import math
import warnings

import pytest
import torch

from trustfast.config import ConfigError
from trustfast.data.skin import SkinDataset, synthetic_skin
from trustfast.diffusion.fairskin import (
    CellLabels,
    FairSampler,
    FairSkinConfig,
    WithinCellDiversity,
    balanced_probabilities,
    calibrate_margin,
    cell_index,
    cells_to_generate,
    class_diversity_weights,
    mix_real_synthetic,
    split_cells,
    synthetic_counts_needed,
    within_cell_diversity,
)

GROUPS3 = ("I", "II", "III")
CLASSES2 = ("a", "b")


def _skin(cells_and_counts, *, tag=0.0, size=2):
    """A SkinDataset with `count` images of each (group, class); image i is constant
    tag + i / 1000 so that tests can tell which images were chosen."""
    labels, groups = [], []
    for (g, c), k in cells_and_counts.items():
        groups += [g] * k
        labels += [c] * k
    n = len(labels)
    values = tag + torch.arange(n, dtype=torch.float32) / 1000
    images = values.view(n, 1, 1, 1).expand(n, 3, size, size).clone()
    return SkinDataset(images, torch.tensor(labels, dtype=torch.long),
                       torch.tensor(groups, dtype=torch.long), CLASSES2, GROUPS3)


# -- cells ---------------------------------------------------------------------------------------
def test_cell_index_round_trip():
    groups, labels = torch.tensor([0, 0, 2, 5]), torch.tensor([0, 4, 1, 3])
    cells = cell_index(labels, groups, 5)
    assert cells.tolist() == [0, 4, 11, 28]
    g, c = split_cells(cells, 5)
    assert g.tolist() == groups.tolist() and c.tolist() == labels.tolist()
    with pytest.raises(ValueError, match="labels must be < num_classes"):
        cell_index(labels, groups, 4)
    with pytest.raises(ValueError, match="labels must have shape"):
        cell_index(labels[:2], groups, 5)


def test_cell_labels_dataset():
    data = _skin({(0, 1): 2, (2, 0): 1})
    cl = CellLabels(data)
    assert len(cl) == 3
    image, cell, group, label = cl[2]
    assert (cell, group, label) == (4, 2, 0)
    assert torch.equal(image, data.images[2])
    assert [cl[i][1] for i in range(3)] == [1, 1, 4]


# -- level 1 -------------------------------------------------------------------------------------
# groups 0: 6 samples (4 class 0, 2 class 1), 1: 3 samples (class 0), 2: 1 sample (class 1)
GROUPS = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 2])
LABELS = torch.tensor([0, 0, 0, 0, 1, 1, 0, 0, 0, 1])


def test_balanced_probabilities_known_answers():
    p0 = balanced_probabilities(GROUPS, LABELS, mode="group", temperature=0.0)
    torch.testing.assert_close(p0, torch.full((10,), 0.1, dtype=torch.float64))
    p1 = balanced_probabilities(GROUPS, LABELS, mode="group", temperature=1.0)
    want = torch.tensor([1 / 18] * 6 + [1 / 9] * 3 + [1 / 3], dtype=torch.float64)
    torch.testing.assert_close(p1, want)
    # T = 1/2: group mass n^(1/2) / (sqrt 6 + sqrt 3 + 1), split evenly inside the group
    z = math.sqrt(6) + math.sqrt(3) + 1
    ph = balanced_probabilities(GROUPS, LABELS, mode="group", temperature=0.5)
    want = torch.tensor([math.sqrt(6) / z / 6] * 6 + [math.sqrt(3) / z / 3] * 3 + [1 / z],
                        dtype=torch.float64)
    torch.testing.assert_close(ph, want)
    # group_class, T = 1: four non-empty cells (0,0) x4, (0,1) x2, (1,0) x3, (2,1) x1
    pc = balanced_probabilities(GROUPS, LABELS, mode="group_class", temperature=1.0)
    want = torch.tensor([1 / 16] * 4 + [1 / 8] * 2 + [1 / 12] * 3 + [1 / 4],
                        dtype=torch.float64)
    torch.testing.assert_close(pc, want)
    assert float(pc.sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("mode", ["group", "group_class"])
@pytest.mark.parametrize("temperature", [0.0, 0.3, 1.0])
def test_sampler_frequencies_match_the_formula(mode, temperature):
    n = len(GROUPS)
    sampler = FairSampler(GROUPS, LABELS, mode=mode, temperature=temperature,
                          num_samples=40000, seed=7)
    idx = sampler.indices()
    freq = torch.bincount(idx, minlength=n).double() / len(idx)
    cells = GROUPS if mode == "group" else GROUPS * 2 + LABELS
    sizes = torch.bincount(cells).double()[cells]
    want = sizes.pow(-temperature) / sizes.pow(-temperature).sum()
    # 40000 draws: the standard error of a frequency p is sqrt(p(1-p)/40000) <= 0.0025
    assert (freq - want).abs().max() < 0.01
    mass = torch.zeros(int(cells.max()) + 1, dtype=torch.float64).index_add_(0, cells, freq)
    mass = mass[mass > 0]
    if temperature == 1.0:  # every group (cell) equally often
        assert (mass - 1 / len(mass)).abs().max() < 0.01
    if temperature == 0.0:  # natural frequencies
        natural = torch.bincount(cells).double()
        natural = natural[natural > 0] / n
        assert (mass - natural).abs().max() < 0.01


def test_sampler_is_deterministic_by_seed_and_epoch():
    a = FairSampler(GROUPS, LABELS, mode="group", temperature=1.0, seed=3, num_samples=50)
    b = FairSampler(GROUPS, LABELS, mode="group", temperature=1.0, seed=3, num_samples=50)
    assert len(a) == 50 and list(a) == list(b)
    e0 = list(a)
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b) != e0
    a.set_epoch(0)
    assert list(a) == e0
    c = FairSampler(GROUPS, LABELS, mode="group", temperature=1.0, seed=4, num_samples=50)
    assert list(c) != e0
    assert len(FairSampler(GROUPS, LABELS, mode="group", temperature=1.0)) == len(GROUPS)


def test_sampler_without_replacement_is_a_permutation():
    s = FairSampler(GROUPS, LABELS, mode="group_class", temperature=1.0, replacement=False)
    assert sorted(s) == list(range(len(GROUPS)))
    with pytest.raises(ValueError, match="num_samples"):
        FairSampler(GROUPS, LABELS, num_samples=11, replacement=False)


def test_sampler_drives_a_dataloader():
    data = _skin({(0, 0): 8, (2, 1): 2})
    sampler = FairSkinConfig(temperature=1.0).sampler(data, seed=0)
    loader = torch.utils.data.DataLoader(data, batch_size=5, sampler=sampler)
    groups = torch.cat([batch[2] for batch in loader])
    assert len(groups) == 10 and set(groups.tolist()) <= {0, 2}


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(temperature=1.5), ValueError, "temperature must be"),
    (dict(temperature="1"), TypeError, "temperature must be a number"),
    (dict(mode="class"), ValueError, "mode must be one of"),
])
def test_balanced_probabilities_refuses_bad_options(kwargs, err, match):
    with pytest.raises(err, match=match):
        balanced_probabilities(GROUPS, LABELS, **kwargs)


def test_bad_groups_and_labels_are_refused():
    with pytest.raises(TypeError, match="groups must be a"):
        balanced_probabilities(GROUPS.float(), LABELS)
    with pytest.raises(ValueError, match="labels must have shape"):
        balanced_probabilities(GROUPS, LABELS[:3])
    with pytest.raises(ValueError, match="groups must lie in"):
        balanced_probabilities(-GROUPS - 1, LABELS)
    with pytest.raises(ValueError, match="groups must not be empty"):
        balanced_probabilities(GROUPS[:0], LABELS[:0])


# -- level 2 -------------------------------------------------------------------------------------
def test_class_diversity_weights_known_answer():
    w = class_diversity_weights(GROUPS, LABELS, power=1.0)
    # cell sizes 4, 2, 3, 1 -> raw 1/4, 1/2, 1/3, 1; mean over samples (4 * 1/4 + ...) / 10 = 0.4
    raw = torch.tensor([1 / 4] * 4 + [1 / 2] * 2 + [1 / 3] * 3 + [1.0])
    torch.testing.assert_close(w, raw / 0.4)
    assert float(w.mean()) == pytest.approx(1.0)
    # inverse ordering: the smaller the cell, the larger the weight
    sizes = torch.tensor([4] * 4 + [2] * 2 + [3] * 3 + [1])
    order = torch.argsort(sizes)
    assert torch.all(w[order][1:] <= w[order][:-1])
    # every cell weighs the same in total at power 1
    cells = GROUPS * 2 + LABELS
    totals = torch.zeros(6).index_add_(0, cells, w)
    torch.testing.assert_close(totals[totals > 0], torch.full((4,), 2.5))
    torch.testing.assert_close(class_diversity_weights(GROUPS, LABELS, power=0.0),
                               torch.ones(10))


def test_class_diversity_weights_clip():
    w = class_diversity_weights(GROUPS, LABELS, power=1.0, clip=1.5)
    assert float(w.mean()) == pytest.approx(1.0)
    # clipped to [2/3, 1.5] then rescaled by one factor: the ratio max / min is at most 2.25
    assert float(w.max() / w.min()) <= 2.25 + 1e-6
    unclipped = class_diversity_weights(GROUPS, LABELS, power=1.0)
    assert float(w.max() / w.min()) < float(unclipped.max() / unclipped.min())
    with pytest.raises(ValueError, match="clip must be"):
        class_diversity_weights(GROUPS, LABELS, clip=0.5)


def test_within_cell_diversity_known_answer():
    x = torch.zeros(4, 1, 2, 2)
    x[1] += 0.1  # d(0, 1) = 0.01
    x[3] += 1.0
    cells = torch.tensor([0, 0, 1, 2])
    loss = within_cell_diversity(x, cells, margin=0.05, weight=2.0)
    assert float(loss) == pytest.approx(2.0 * (0.05 - 0.01), rel=1e-5)
    # a pair already margin apart costs nothing
    assert float(within_cell_diversity(x, cells, margin=0.005)) == 0.0
    # mean over the same-cell pairs: cell 0 has three samples -> three pairs
    x3 = torch.zeros(3, 1, 1, 1)
    x3[2] += 1.0  # pairs (0,1): d 0, (0,2) and (1,2): d 1
    loss3 = within_cell_diversity(x3, torch.zeros(3, dtype=torch.long), margin=0.5)
    assert float(loss3) == pytest.approx(0.5 / 3)


def test_within_cell_diversity_is_zero_when_cells_differ():
    x = torch.randn(5, 3, 4, 4, requires_grad=True)
    loss = within_cell_diversity(x, torch.arange(5), margin=1.0)
    assert loss.shape == () and float(loss) == 0.0


def test_within_cell_diversity_pushes_close_predictions_apart():
    torch.manual_seed(0)
    base = torch.randn(1, 3, 4, 4)
    x = (base + 1e-3 * torch.randn(2, 3, 4, 4)).requires_grad_(True)
    cells = torch.tensor([3, 3])
    loss = within_cell_diversity(x, cells, margin=0.1)
    assert float(loss.detach()) > 0
    loss.backward()
    assert x.grad.abs().sum() > 0
    before = float(((x[0] - x[1]) ** 2).mean().detach())
    with torch.no_grad():
        y = x - 100.0 * x.grad
    after = float(((y[0] - y[1]) ** 2).mean())
    assert after > before
    # the gradient is the hinge's: -2 (x_i - x_j) / D on sample i, the opposite on j
    d = x.detach()[0] - x.detach()[1]
    torch.testing.assert_close(x.grad[0], -2 * d / d.numel(), rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(x.grad[1], 2 * d / d.numel(), rtol=1e-4, atol=1e-9)
    # exactly equal predictions: the full penalty, and a finite (stationary, zero) gradient
    same = base.expand(2, 3, 4, 4).clone().requires_grad_(True)
    loss = within_cell_diversity(same, cells, margin=0.1, weight=2.0)
    assert float(loss.detach()) == pytest.approx(0.2)
    loss.backward()
    assert torch.isfinite(same.grad).all()


def test_within_cell_diversity_timestep_threshold():
    x = torch.zeros(4, 1, 2, 2)
    cells = torch.tensor([0, 0, 1, 1])
    t = torch.tensor([10, 20, 10, 900])
    full = within_cell_diversity(x, cells, margin=0.1, timesteps=t)
    assert float(full) == pytest.approx(0.1)
    low = within_cell_diversity(x, cells, margin=0.1, timesteps=t, max_timestep=500)
    assert float(low) == pytest.approx(0.1)  # only pair (0, 1) counts, still d = 0
    none = within_cell_diversity(x, cells, margin=0.1, timesteps=t, max_timestep=15)
    assert float(none) == 0.0
    with pytest.raises(ValueError, match="timesteps must be given"):
        within_cell_diversity(x, cells, margin=0.1, max_timestep=15)


def test_within_cell_diversity_regularizer_signature():
    cells_of_dataset = torch.tensor([0, 0, 1, 1, 2, 2])
    reg = WithinCellDiversity(cells_of_dataset, weight=3.0, margin=0.2)
    x = torch.zeros(3, 3, 2, 2)
    null_labels = torch.full((3,), 6)  # labels dropped for classifier-free guidance
    t = torch.tensor([5, 6, 7])
    assert float(reg(x, null_labels, torch.tensor([0, 1, 2]), t)) == pytest.approx(0.6)
    assert float(reg(x, null_labels, torch.tensor([0, 2, 4]), t)) == 0.0
    with pytest.raises(ValueError, match="indices must lie in"):
        reg(x, null_labels, torch.tensor([0, 1, 6]), t)


def test_calibrate_margin_known_answer():
    # cell 0: images 0, 0.5, 1 in [0, 1] -> -1, 0, 1 in model scale: d = 1, 4, 1;
    # cell 1: one image (no pair); cell 2: 0.25 and 0.75 -> d = 1
    values = torch.tensor([0.0, 0.5, 1.0, 0.3, 0.25, 0.75])
    images = values.view(6, 1, 1, 1).expand(6, 3, 2, 2).clone()
    cells = torch.tensor([0, 0, 0, 1, 2, 2])
    assert calibrate_margin(images, cells, quantile=0.0) == pytest.approx(1.0)
    assert calibrate_margin(images, cells, quantile=1.0) == pytest.approx(4.0)
    assert calibrate_margin(images, cells, quantile=0.5) == pytest.approx(1.0)
    # first max_per_cell images only: cell 0 keeps (-1, 0): d = 1
    assert calibrate_margin(images, cells, quantile=1.0, max_per_cell=2) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least one cell with two images"):
        calibrate_margin(images[:1], cells[:1])


def test_within_cell_diversity_refuses_bad_input():
    x = torch.zeros(2, 3, 2, 2)
    with pytest.raises(ValueError, match="cells must have shape"):
        within_cell_diversity(x, torch.zeros(3, dtype=torch.long), margin=0.1)
    with pytest.raises(ValueError, match="margin must be"):
        within_cell_diversity(x, torch.zeros(2, dtype=torch.long), margin=0.0)
    with pytest.raises(TypeError, match="x0_pred must be a floating"):
        within_cell_diversity(x.long(), torch.zeros(2, dtype=torch.long), margin=0.1)


# -- level 3 -------------------------------------------------------------------------------------
REAL = {(0, 0): 5, (0, 1): 3, (1, 0): 2, (2, 1): 1}  # (1, 1) and (2, 0) empty
SYN = {(0, 0): 4, (0, 1): 4, (1, 0): 4, (1, 1): 1, (2, 1): 4}  # (2, 0): none


def test_synthetic_counts_needed_known_answer():
    real = _skin(REAL)
    assert synthetic_counts_needed(real).tolist() == [[0, 2], [3, 5], [5, 4]]
    assert synthetic_counts_needed(real, 3).tolist() == [[0, 0], [1, 3], [3, 2]]
    groups, labels = cells_to_generate(synthetic_counts_needed(real, 3))
    assert list(zip(groups.tolist(), labels.tolist())) == \
        [(1, 0)] + [(1, 1)] * 3 + [(2, 0)] * 3 + [(2, 1)] * 2


def test_mix_real_synthetic_known_answer():
    real, syn = _skin(REAL, tag=0.0), _skin(SYN, tag=0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mixed, w = mix_real_synthetic(real, syn, target_count=4, synthetic_weight=0.5,
                                      balance_cells=False)
    # needs: (0,1) 1, (1,0) 2, (1,1) 4 (1 exists), (2,0) 4 (none), (2,1) 3
    assert len(caught) == 1
    msg = str(caught[0].message)
    assert "2 cells" in msg and "(II, b): 1 of 4" in msg and "(III, a): 0 of 4" in msg
    assert isinstance(mixed, type(real))
    assert len(mixed) == 11 + 1 + 2 + 1 + 3
    assert torch.equal(mixed.images[:11], real.images)  # real first, unchanged
    # synthetic chosen in cell order, first ones of each cell: SYN rows are
    # (0,0) 0-3, (0,1) 4-7, (1,0) 8-11, (1,1) 12, (2,1) 13-16
    picked = ((mixed.images[11:, 0, 0, 0] - 0.5) * 1000).round().long().tolist()
    assert picked == [4, 8, 9, 12, 13, 14, 15]
    assert mixed.cell_counts().tolist() == [[5, 4], [4, 1], [0, 4]]
    raw = torch.tensor([1.0] * 11 + [0.5] * 7)
    torch.testing.assert_close(w, raw / raw.mean())


def test_mix_balances_cells():
    real, syn = _skin(REAL, tag=0.0), _skin(SYN, tag=0.5)
    with pytest.warns(UserWarning, match="too few synthetic"):
        mixed, w = mix_real_synthetic(real, syn, target_count=None, synthetic_weight=0.5)
    assert float(w.mean()) == pytest.approx(1.0)
    cells = mixed.groups * 2 + mixed.labels
    totals = torch.zeros(6).index_add_(0, cells, w)
    nonempty = mixed.cell_counts().flatten() > 0
    assert int(nonempty.sum()) == 5  # (2, 0) has neither real nor synthetic images
    torch.testing.assert_close(totals[nonempty], torch.full((5,), len(w) / 5))
    # inside a cell, real : synthetic = 1 : lambda; cell (0,1): 3 real, 2 synthetic
    in_cell = w[cells == 1]
    assert torch.allclose(in_cell[:3], in_cell[0]) and \
        float(in_cell[3] / in_cell[0]) == pytest.approx(0.5)
    # known answer: cell (0,1) total 3 + 2 * 0.5 = 4 -> real weight (1/4) * N / 5
    assert float(in_cell[0]) == pytest.approx(0.25 * len(w) / 5)


def test_mix_adds_nothing_to_full_cells_and_zero_lambda():
    real, syn = _skin(REAL, tag=0.0), _skin(SYN, tag=0.5)
    with pytest.warns(UserWarning, match=r"1 cells .*\(III, a\): 0 of 1"):
        mixed, w = mix_real_synthetic(real, syn, target_count=1, synthetic_weight=0.0)
    # every non-empty real cell has >= 1; (1,1) gets 1 synthetic, (2,0) has none: short
    assert len(mixed) == 12 and w[-1] == 0.0
    assert float(w.mean()) == pytest.approx(1.0)


def test_mix_refuses_mismatched_data():
    real = _skin(REAL)
    other = SkinDataset(real.images, real.labels, real.groups, ("x", "y"), GROUPS3)
    with pytest.raises(ValueError, match="class_names and group_names"):
        mix_real_synthetic(real, other, target_count=4, synthetic_weight=0.5)
    with pytest.raises(TypeError, match="synthetic must be a SkinDataset"):
        mix_real_synthetic(real, torch.zeros(3), target_count=4, synthetic_weight=0.5)
    with pytest.raises(ValueError, match="synthetic_weight must be"):
        mix_real_synthetic(real, real, target_count=4, synthetic_weight=-1.0)
    small = _skin(SYN, size=3)
    with pytest.raises(ValueError, match="image shape"):
        mix_real_synthetic(real, small, target_count=4, synthetic_weight=0.5)


# -- the config ----------------------------------------------------------------------------------
def test_config_pieces():
    data = _skin(REAL)
    cfg = FairSkinConfig(temperature=0.5, diversity_power=0.5)
    sampler = cfg.sampler(data, seed=1)
    torch.testing.assert_close(sampler.probabilities, balanced_probabilities(
        data.groups, data.labels, mode="group_class", temperature=cfg.temperature))
    torch.testing.assert_close(cfg.loss_weights(data), class_diversity_weights(
        data.groups, data.labels, power=cfg.diversity_power))
    assert cfg.regularizer(data) is None
    off = FairSkinConfig(balance="none", diversity_power=0.0, diversity_weight=0.0)
    assert off.sampler(data) is None and off.loss_weights(data) is None
    reg = FairSkinConfig(diversity_weight=0.5, diversity_margin=0.2,
                         diversity_max_timestep=100).regularizer(data)
    assert isinstance(reg, WithinCellDiversity) and reg.max_timestep == 100
    assert reg.margin == 0.2
    calibrated = FairSkinConfig(diversity_weight=0.5).regularizer(data)
    assert calibrated.margin == pytest.approx(calibrate_margin(data.images, reg.cells))
    assert reg.cells.tolist() == (data.groups * 2 + data.labels).tolist()
    assert FairSkinConfig().counts_needed(data).tolist() == [[0, 2], [3, 5], [5, 4]]
    assert FairSkinConfig(target_count=3).counts_needed(data).tolist() == \
        [[0, 0], [1, 3], [3, 2]]


@pytest.mark.parametrize("temperature, power", [(1.0, 0.0), (0.5, 0.5), (0.25, 0.75)])
def test_levels_1_and_2_make_cells_uniform_when_t_plus_p_is_1(temperature, power):
    # group_class sampling at T and weights of power p: a cell's share of the loss is
    # n^(1-T-p), uniform when T + p = 1 (the defaults: T = 1, p = 0, weights off)
    data = _skin(REAL)
    cfg = FairSkinConfig(temperature=temperature, diversity_power=power)
    p = cfg.sampler(data).probabilities
    weights = cfg.loss_weights(data)
    w = torch.ones_like(p) if weights is None else weights.double()
    cells = data.groups * 2 + data.labels
    share = torch.zeros(6, dtype=torch.float64).index_add_(0, cells, p * w)
    share = share[share > 0]
    torch.testing.assert_close(share / share.sum(), torch.full((4,), 0.25, dtype=torch.float64))


def test_config_defaults_balance_cells_by_sampling_alone():
    cfg = FairSkinConfig()
    assert (cfg.balance, cfg.temperature, cfg.diversity_power) == ("group_class", 1.0, 0.0)
    assert cfg.loss_weights(_skin(REAL)) is None


@pytest.mark.parametrize("key, value", [
    ("balance", "class"), ("temperature", 2.0), ("diversity_power", -1.0),
    ("diversity_clip", 0.5), ("diversity_weight", -0.1), ("diversity_margin", -0.1),
    ("diversity_max_timestep", 0), ("target_count", -1), ("synthetic_weight", -0.5),
    ("temperature", "hot"),
])
def test_config_errors_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"^{key} must be"):
        FairSkinConfig(**{key: value})


def test_config_from_strings():
    cfg = FairSkinConfig(temperature="0.25", diversity_clip="none", target_count="7",
                         balance_cells="false")
    assert cfg.temperature == 0.25 and cfg.diversity_clip is None
    assert cfg.target_count == 7 and cfg.balance_cells is False


# -- with the built-in data and train_diffusion ---------------------------------------------------
def test_levels_on_built_in_skin_data():
    data = synthetic_skin(400, size=8, seed=0)
    cfg = FairSkinConfig(temperature=1.0, diversity_power=0.0)
    sampler = cfg.sampler(data, seed=0)
    cells = cell_index(data.labels, data.groups, data.num_classes)
    draws = cells[torch.cat([FairSampler(data.groups, data.labels, temperature=1.0, seed=0,
                                         num_samples=20000).indices()])]
    freq = torch.bincount(draws, minlength=30).double() / len(draws)
    nonempty = data.cell_counts().flatten() > 0
    assert (freq[nonempty] - 1 / int(nonempty.sum())).abs().max() < 0.01
    assert len(list(sampler)) == 400
    # level 3 on the same data: every cell reaches the largest real cell
    syn = synthetic_skin(3000, size=8, seed=1)
    need = synthetic_counts_needed(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rare cells of the synthetic pool may run short
        mixed, w = mix_real_synthetic(data, syn, target_count=None, synthetic_weight=0.5)
    have = syn.cell_counts()
    want = data.cell_counts() + torch.minimum(need, have)
    assert torch.equal(mixed.cell_counts(), want)
    totals = torch.zeros(30).index_add_(0, mixed.groups * 5 + mixed.labels, w)
    filled = mixed.cell_counts().flatten() > 0
    torch.testing.assert_close(totals[filled], torch.full((int(filled.sum()),),
                                                          len(w) / int(filled.sum())))


def test_pieces_plug_into_train_diffusion():
    pytest.importorskip("diffusers")
    from trustfast.diffusion.models import label_unet
    from trustfast.diffusion.train import DiffusionTrainConfig, train_diffusion

    full = synthetic_skin(200, size=16, seed=0)
    top = torch.argsort(full.cell_counts().flatten(), descending=True)[:2]
    cells = full.groups * full.num_classes + full.labels
    data = full.subset(torch.nonzero((cells == top[0]) | (cells == top[1])).flatten()[:24])
    train = CellLabels(data)
    tc = DiffusionTrainConfig(max_steps=2, batch_size=8, lr=1e-3, ema_decay=0.0, seed=0)
    plain = FairSkinConfig()
    strong = FairSkinConfig(diversity_weight=1.0, diversity_margin=10.0)
    runs = []
    for cfg in (plain, strong):
        model = label_unet(data.num_groups * data.num_classes, sample_size=16, seed=0)
        res = train_diffusion(model, train, tc, sampler=cfg.sampler(data, seed=0),
                              loss_weight=cfg.loss_weights(data),
                              regularizer=cfg.regularizer(data), progress=False)
        runs.append(res.losses)
    assert all(math.isfinite(v) for r in runs for v in r)
    # same model, draws and batch at step 0 (8 samples of 2 cells: same-cell pairs exist):
    # the hinge adds weight * mean(margin - d) > 0
    assert runs[1][0] > runs[0][0]
