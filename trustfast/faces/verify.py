"""Face verification: embeddings, the LFW 10-fold protocol, TAR@FAR, and a thresholded verifier.

One distance throughout: the squared Euclidean distance between L2-normalized embeddings,
d = |a - b|^2 = 2 - 2 cos(a, b), in [0, 4]; a pair matches iff d < threshold (insightface's LFW
evaluation). Cosine similarities are offered too (`FaceVerifier.similarity`); a distance
threshold t is the similarity threshold 1 - t / 2.

Embeddings follow the standard test-time protocol: embed the image and its horizontal flip,
add the two embeddings, L2-normalize the sum.

Input policy: every public function here refuses images that are not float [N, C, H, W]
tensors (TypeError / ValueError naming the argument) and, by default, images with NaN/Inf or
values outside [0, 1] (a ValueError: NaN pixels would give NaN embeddings, and normalized or
0..255 images would be silently wrong). `embed`, `embed_differentiable` and
`FaceVerifier.embed` take `validate=False` to skip the value checks (one read of the batch) in
hot loops that made the images themselves, e.g. an attack that clamps to [0, 1]; the type and
shape checks always run.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as fn

from trustfast.checks import (
    FLOATING,
    IMAGE_HINT,
    check_images,
    check_number,
    check_same_shape,
    check_tensor,
    shown,
)
from trustfast.utils import eval_mode


def _insightface_thresholds() -> torch.Tensor:
    return torch.arange(0, 4, 0.01, dtype=torch.float64)  # np.arange(0, 4, 0.01)


def _check_images(name: str, x, validate: bool = True) -> None:
    """Float [N, C, H, W]; with `validate`, also finite and in [0, 1] (the module's policy)."""
    if validate:
        check_images(name, x)
    else:
        check_tensor(name, x, dtypes=FLOATING, ndim=4, hint=IMAGE_HINT)


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (a face embedder), got {shown(model)}")


def _check_flag(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {shown(value)}")


def _check_pair_images(images_a, images_b) -> None:
    _check_images("images_a", images_a)
    _check_images("images_b", images_b)
    check_same_shape("images_b", images_b, "images_a", images_a)


def _check_pairs(distances, same) -> tuple[torch.Tensor, torch.Tensor]:
    check_tensor("distances", distances, dtypes=FLOATING, ndim=1)
    check_tensor("same", same, dtypes=(torch.bool,), shape=tuple(distances.shape),
                 hint="True where the pair shows one person")
    check_tensor("distances", distances, finite=True)
    return distances.detach().double().cpu(), same.cpu()


def embed_differentiable(model: nn.Module, images: torch.Tensor, flip: bool = True,
                         validate: bool = True):
    """normalize(model(x) + model(flip(x))) (or normalize(model(x))), differentiable in x.
    The model's mode is left as it is (call it in eval mode). `validate=False` skips the
    finiteness / [0, 1] check of `images` (see the module docstring)."""
    _check_images("images", images, validate)
    if flip:
        out = model(torch.cat([images, images.flip(-1)]))
        out = out[:len(images)] + out[len(images):]
    else:
        out = model(images)
    return fn.normalize(out, dim=1)


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, flip: bool = True,
          batch_size: int = 256, validate: bool = True) -> torch.Tensor:
    """L2-normalized embeddings [N, D] (float32, on `images`' device) of `images` [N, C, H, W]
    in [0, 1]: normalize(f(x) + f(flip(x))) with `flip`, else normalize(f(x)); the model runs
    in eval mode (each module's mode is restored afterwards), in batches on its own device.
    NaN/Inf or out-of-range images are a ValueError unless `validate=False`."""
    _check_model(model)
    _check_images("images", images, validate)
    _check_flag("flip", flip)
    batch_size = check_number("batch_size", batch_size, low=1, integer=True)
    param = next(model.parameters(), None)
    device = param.device if param is not None else images.device
    out = []
    with eval_mode(model):
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size].to(device)
            out.append(embed_differentiable(model, x, flip, validate=False).float()
                       .to(images.device))
    return torch.cat(out) if out else images.new_zeros(0, 0)


def pair_distances(emb_a: torch.Tensor, emb_b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances |a_i - b_i|^2 [N] between rows of two [N, D] embeddings
    (float, finite)."""
    check_tensor("emb_a", emb_a, dtypes=FLOATING, ndim=2, finite=True)
    check_tensor("emb_b", emb_b, dtypes=FLOATING, ndim=2, finite=True)
    check_same_shape("emb_b", emb_b, "emb_a", emb_a)
    return (emb_a - emb_b).pow(2).sum(1)


def _kfold_slices(n: int, folds: int) -> list[slice]:
    # sklearn's KFold(n_splits=folds, shuffle=False): contiguous folds, the first n % folds
    # of them one pair longer (what insightface's LFW evaluation uses)
    sizes = [n // folds + (1 if f < n % folds else 0) for f in range(folds)]
    bounds = torch.tensor([0] + sizes).cumsum(0).tolist()
    return [slice(bounds[f], bounds[f + 1]) for f in range(folds)]


def _thresholds(thresholds) -> torch.Tensor:
    if thresholds is None:
        return _insightface_thresholds()
    if isinstance(thresholds, (str, bytes)):
        raise TypeError(f"thresholds must be a sequence of numbers, got {shown(thresholds)}")
    try:
        t = torch.as_tensor(thresholds, dtype=torch.float64).flatten()
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"thresholds must be a sequence of numbers, got "
                        f"{shown(thresholds)}") from None
    if t.numel() == 0 or not torch.isfinite(t).all():
        raise ValueError("thresholds must be a non-empty sequence of finite numbers")
    return t


def best_threshold(distances: torch.Tensor, same: torch.Tensor,
                   thresholds: Sequence[float] | torch.Tensor | None = None
                   ) -> tuple[float, float]:
    """(threshold, accuracy): the threshold of highest accuracy of "d < threshold <=> same"
    over all pairs, the smallest on ties. `thresholds` None: every midpoint between consecutive
    distinct distances, plus one below all and one above all (the exact optimum)."""
    d, s = _check_pairs(distances, same)
    if len(d) == 0:
        raise ValueError("distances must not be empty")
    if thresholds is None:
        u = torch.unique(d)
        t = torch.cat([u[:1] - 1.0, (u[1:] + u[:-1]) / 2, u[-1:] + 1.0])
    else:
        t = _thresholds(thresholds)
    acc = ((d.unsqueeze(0) < t.unsqueeze(1)) == s.unsqueeze(0)).double().mean(1)
    i = int(acc.argmax())
    return float(t[i]), float(acc[i])


def kfold_accuracy(distances: torch.Tensor, same: torch.Tensor, folds: int = 10,
                   thresholds: Sequence[float] | torch.Tensor | None = None) -> dict:
    """LFW's protocol: split the pairs in order into `folds` contiguous folds (sklearn KFold,
    no shuffle); for each fold pick the threshold of best accuracy on the other folds (the
    smallest on ties) and measure accuracy on the held-out fold with "same iff d < threshold".

    Returns `accuracy` (mean over folds), `std` (population std over folds, as insightface
    reports), `fold_accuracies`, `thresholds` (one per fold), and `best_threshold` (the best
    over all pairs). `thresholds` None: insightface's grid 0, 0.01, ..., 3.99.
    """
    d, s = _check_pairs(distances, same)
    folds = check_number("folds", folds, integer=True)
    if not 2 <= folds <= len(d):
        raise ValueError(f"folds must be an int in [2, number of pairs = {len(d)}], "
                         f"got {folds!r}")
    t = _thresholds(thresholds)
    correct = ((d.unsqueeze(0) < t.unsqueeze(1)) == s.unsqueeze(0)).double()  # [T, n]
    total = correct.sum(1)
    fold_acc, fold_t = [], []
    for sl in _kfold_slices(len(d), folds):
        held = correct[:, sl]
        train_acc = (total - held.sum(1)) / (len(d) - held.shape[1])
        i = int(train_acc.argmax())
        fold_t.append(float(t[i]))
        fold_acc.append(float(held[i].mean()))
    acc = torch.tensor(fold_acc, dtype=torch.float64)
    return {"accuracy": float(acc.mean()), "std": float(acc.std(unbiased=False)),
            "fold_accuracies": fold_acc, "thresholds": fold_t,
            "best_threshold": float(t[int(total.argmax())])}


def verification_accuracy(emb_a: torch.Tensor, emb_b: torch.Tensor, same: torch.Tensor,
                          folds: int = 10,
                          thresholds: Sequence[float] | torch.Tensor | None = None) -> dict:
    """`kfold_accuracy` of the squared distances between L2-normalized embeddings (the LFW /
    insightface protocol: 10 folds, threshold grid 0..4 step 0.01)."""
    return kfold_accuracy(pair_distances(emb_a, emb_b), same, folds, thresholds)


def tar_at_far(distances: torch.Tensor, same: torch.Tensor,
               far: float | Sequence[float] = 1e-3) -> float | list[float]:
    """True accept rate at a false accept rate: the largest fraction of genuine pairs with
    d < t over thresholds t that accept at most floor(far * impostors) impostor pairs; that t
    is the (k+1)-th smallest impostor distance, k = floor(far * impostors). Lower distance =
    more similar: for similarity scores pass their negation. A float for a float `far`, a list
    for a sequence."""
    d, s = _check_pairs(distances, same)
    scalar = not isinstance(far, Sequence)
    fars = [far] if scalar else list(far)
    if not fars:
        raise ValueError("far must be a number in (0, 1] or a non-empty sequence of such")
    fars = [check_number("far", f, low=0.0, high=1.0, low_open=True) for f in fars]
    genuine, impostor = d[s], torch.sort(d[~s]).values
    if len(genuine) == 0 or len(impostor) == 0:
        raise ValueError("same must mark at least one genuine and one impostor pair")
    out = []
    for f in fars:
        k = int(f * len(impostor) + 1e-9)  # floor, robust to 0.1 * 10 = 0.9999...
        t = impostor[k] if k < len(impostor) else torch.tensor(float("inf"), dtype=d.dtype)
        out.append(float((genuine < t).double().mean()))
    return out[0] if scalar else out


def evaluate_pairs(model: nn.Module, images_a: torch.Tensor, images_b: torch.Tensor,
                   same: torch.Tensor, folds: int = 10,
                   far: float | Sequence[float] = (1e-3, 1e-2, 1e-1), flip: bool = True,
                   batch_size: int = 256) -> dict:
    """Embed both sides of each pair and report the 10-fold verification accuracy (`accuracy`,
    `std`, `thresholds`, `best_threshold`, `fold_accuracies`) and `tar@far=<far>` for each far."""
    _check_model(model)
    _check_pair_images(images_a, images_b)
    d = pair_distances(embed(model, images_a, flip, batch_size, validate=False),
                       embed(model, images_b, flip, batch_size, validate=False))
    out = kfold_accuracy(d, same, folds)
    fars = list(far) if isinstance(far, Sequence) else [far]
    for f, tar in zip(fars, tar_at_far(d, same, fars)):
        out[f"tar@far={f:g}"] = tar
    return out


def fit_threshold(model: nn.Module, images_a: torch.Tensor, images_b: torch.Tensor,
                  same: torch.Tensor, flip: bool = True, batch_size: int = 256) -> float:
    """The squared-distance threshold of best accuracy on the given pairs (exact: a midpoint
    between consecutive pair distances, see `best_threshold`)."""
    _check_model(model)
    _check_pair_images(images_a, images_b)
    d = pair_distances(embed(model, images_a, flip, batch_size, validate=False),
                       embed(model, images_b, flip, batch_size, validate=False))
    return best_threshold(d, same)[0]


@torch.no_grad()
def verify(model: nn.Module, images_a: torch.Tensor, images_b: torch.Tensor, threshold: float,
           flip: bool = True, batch_size: int = 256) -> torch.Tensor:
    """Bool [N]: pair i matches iff |e(a_i) - e(b_i)|^2 < threshold (normalized embeddings)."""
    _check_model(model)
    _check_pair_images(images_a, images_b)
    threshold = check_number("threshold", threshold, low=0.0, high=4.0)
    return pair_distances(embed(model, images_a, flip, batch_size, validate=False),
                          embed(model, images_b, flip, batch_size, validate=False)) < threshold


class FaceVerifier(nn.Module):
    """A face model with a decision threshold, for verification and for attacks on it.

    `embed(x)` is differentiable in x (flip-augmented, L2-normalized); `similarity` is the
    cosine of two embeddings, `distance` their squared Euclidean distance (2 - 2 cos), and
    `match` is distance < `threshold` (equivalently similarity > `similarity_threshold`).
    The wrapped model is put in eval mode (batch norm uses running statistics).
    """

    def __init__(self, model: nn.Module, threshold: float, flip: bool = True):
        super().__init__()
        _check_model(model)
        _check_flag("flip", flip)
        threshold = check_number("threshold", threshold, low=0.0, high=4.0,
                                 hint="a squared distance between unit embeddings")
        self.model, self.threshold, self.flip = model, float(threshold), bool(flip)
        self.eval()

    @classmethod
    def fit(cls, model: nn.Module, images_a: torch.Tensor, images_b: torch.Tensor,
            same: torch.Tensor, flip: bool = True) -> FaceVerifier:
        """A verifier whose threshold is `fit_threshold` on the given pairs."""
        return cls(model, fit_threshold(model, images_a, images_b, same, flip), flip)

    @property
    def similarity_threshold(self) -> float:
        return 1.0 - self.threshold / 2.0

    def embed(self, x: torch.Tensor, validate: bool = True) -> torch.Tensor:
        """Unit embeddings of images `x` in [0, 1], differentiable in x (`validate=False`:
        skip the finiteness / range check, see the module docstring)."""
        _check_images("x", x, validate)
        return embed_differentiable(self.model, x, self.flip, validate=False)

    forward = embed

    @staticmethod
    def similarity(a_emb: torch.Tensor, b_emb: torch.Tensor) -> torch.Tensor:
        """Cosine similarity [N] of rows (re-normalized, so raw features work too)."""
        return (fn.normalize(a_emb, dim=-1) * fn.normalize(b_emb, dim=-1)).sum(-1)

    @staticmethod
    def distance(a_emb: torch.Tensor, b_emb: torch.Tensor) -> torch.Tensor:
        """Squared Euclidean distance [N] of the L2-normalized rows (= 2 - 2 similarity)."""
        return (fn.normalize(a_emb, dim=-1) - fn.normalize(b_emb, dim=-1)).pow(2).sum(-1)

    def match(self, a_emb: torch.Tensor, b_emb: torch.Tensor) -> torch.Tensor:
        return self.distance(a_emb, b_emb) < self.threshold

    @torch.no_grad()
    def verify(self, images_a: torch.Tensor, images_b: torch.Tensor) -> torch.Tensor:
        """Bool [N]: does image a_i match image b_i?"""
        return self.match(self.embed(images_a), self.embed(images_b))
