"""Issue 17 (reliability): the face API's input policy. Images are float [N, C, H, W] in [0, 1]
at the public boundary; NaN/Inf or out-of-range images are a ValueError naming the argument
(NaN pixels used to give NaN embeddings silently); `validate=False` skips the value checks."""

import math

import pytest
import torch

from trustfast.faces import (
    FaceVerifier,
    embed,
    embed_differentiable,
    evaluate_pairs,
    fit_threshold,
    iresnet,
    kfold_accuracy,
    pair_distances,
    tar_at_far,
    verify,
)

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return iresnet([1, 1, 1, 1], embedding_dim=8, width=4, input_size=16).eval()


def _images(n=4, seed=0):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_embed_refuses_nan_images_and_names_the_argument(model):
    x = _images()
    x[1, 0, 2, 3] = math.nan
    with pytest.raises(ValueError, match=r"images must lie in \[0, 1\], got NaN values"):
        embed(model, x)
    x[1, 0, 2, 3] = math.inf
    with pytest.raises(ValueError, match="images must be finite|images must lie in"):
        embed(model, x)
    with pytest.raises(ValueError, match=r"images must lie in \[0, 1\], got values in"):
        embed(model, _images() * 255)
    with pytest.raises(ValueError, match=r"x must lie in \[0, 1\]"):
        FaceVerifier(model, 1.0).embed(_images() - 0.5)
    with pytest.raises(ValueError, match=r"images must lie in \[0, 1\]"):
        embed_differentiable(model, _images() * 2)


def test_validate_false_skips_only_the_value_checks(model):
    x = _images()
    x[0, 0, 0, 0] = math.nan
    out = embed(model, x, validate=False)  # the caller's promise; no full read of the batch
    assert out.shape == (4, 8) and torch.isnan(out[0]).all()
    good = _images()
    torch.testing.assert_close(embed(model, good, validate=False), embed(model, good))
    with pytest.raises(TypeError, match="images must be a floating tensor"):
        embed(model, (good * 255).to(torch.uint8), validate=False)
    with pytest.raises(ValueError, match="images must have 4 dimensions"):
        embed(model, good[0], validate=False)


def test_face_entry_points_name_their_arguments(model):
    a, b = _images(6, 0), _images(6, 1)
    same = torch.tensor([True, False] * 3)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        embed(lambda x: x, a)
    with pytest.raises(TypeError, match="batch_size must be an integer"):
        embed(model, a, batch_size="8")
    with pytest.raises(TypeError, match="flip must be a bool"):
        embed(model, a, flip=None)
    with pytest.raises(ValueError, match=r"images_b must have the shape of images_a"):
        evaluate_pairs(model, a, b[:4], same)
    bad = b.clone()
    bad[2] = math.nan
    with pytest.raises(ValueError, match="images_b must lie in"):
        fit_threshold(model, a, bad, same)
    with pytest.raises(ValueError, match=r"threshold must be a number >= 0 and <= 4"):
        verify(model, a, b, 5.0)
    with pytest.raises(TypeError, match="threshold must be a number"):
        FaceVerifier(model, "1.0")
    with pytest.raises(TypeError, match="emb_a must be a floating tensor"):
        pair_distances(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3))
    with pytest.raises(ValueError, match="emb_b must be finite"):
        pair_distances(torch.ones(2, 3), torch.full((2, 3), math.nan))
    d = torch.rand(6)
    with pytest.raises(TypeError, match="folds must be an integer"):
        kfold_accuracy(d, same, folds=2.5)
    with pytest.raises(TypeError, match="far must be a number"):
        tar_at_far(d, same, far="0.1")
    with pytest.raises(ValueError, match="far must be a number > 0 and <= 1"):
        tar_at_far(d, same, far=[0.1, 2.0])
    with pytest.raises(TypeError, match="thresholds must be a sequence of numbers"):
        kfold_accuracy(d, same, folds=2, thresholds="0.5")
