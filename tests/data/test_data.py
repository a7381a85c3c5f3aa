"""Built-in data: shapes, range, seeded splits, upsampling."""

import pytest
import torch

from trustfast.data import digits


def test_digits_default_split_is_seeded_and_in_range():
    train, test = digits(seed=0)
    x, y = train.tensors
    assert x.shape[1:] == (1, 8, 8) and len(train) + len(test) == 1797
    assert float(x.min()) >= 0 and float(x.max()) <= 1 and set(y.tolist()) == set(range(10))
    again, _ = digits(seed=0)
    other, _ = digits(seed=1)
    assert torch.equal(again.tensors[1], y) and not torch.equal(other.tensors[1], y)


def test_digits_upsampled_three_channel_matches_the_original():
    small, _ = digits(seed=0)
    big, _ = digits(seed=0, size=32, channels=3)
    x = big.tensors[0]
    assert x.shape[1:] == (3, 32, 32) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert torch.equal(x[:, 0], x[:, 2]) and torch.equal(big.tensors[1], small.tensors[1])
    # average-pooling the upsampled image back to 8x8 gives the original, up to bilinear blur
    pooled = torch.nn.functional.avg_pool2d(x[:, :1], 4).flatten()
    original = small.tensors[0].flatten()
    assert (pooled - original).abs().mean() < 0.1
    assert torch.corrcoef(torch.stack([pooled, original]))[0, 1] > 0.95


@pytest.mark.parametrize("kw, pattern", [(dict(size=4), "size must be"),
                                         (dict(channels=2), "channels must be"),
                                         (dict(test_fraction=1.0), "test_fraction")])
def test_digits_rejects_bad_arguments(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        digits(**kw)
