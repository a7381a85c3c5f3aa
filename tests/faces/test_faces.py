"""Face verification: procedural faces, IResNet and margin heads (vs float64 formulas), training
with exact resume, the LFW 10-fold protocol and TAR@FAR on hand-computed cases, datasets on
disk, and (slow) train on synthetic identities, verify on unseen ones."""

import math
import time

import numpy as np
import pytest
import torch
from torch.nn import functional as fn

import trustfast.faces.train as face_train
from trustfast import TrustfastWarning
from trustfast.data import face_pairs, synthetic_faces
from trustfast.faces import (
    ArcFace,
    CosFace,
    FaceTrainConfig,
    FaceVerifier,
    ImageFolderFaces,
    IResNet,
    best_threshold,
    embed,
    evaluate_pairs,
    fit_threshold,
    iresnet,
    kfold_accuracy,
    load_face_model,
    load_pairs,
    read_pairs,
    tar_at_far,
    train_face_model,
    verification_accuracy,
    verify,
)

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


# ---------------------------------------------------------------- synthetic faces and pairs

def test_synthetic_faces_shapes_range_and_determinism():
    x, y = synthetic_faces(4, 3, size=32, seed=1)
    assert x.shape == (12, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    again, _ = synthetic_faces(4, 3, size=32, seed=1)
    other, _ = synthetic_faces(4, 3, size=32, seed=2)
    assert torch.equal(x, again) and not torch.equal(x, other)
    big, _ = synthetic_faces(2, 2, size=64)
    assert big.shape == (4, 3, 64, 64)


def test_identity_offset_renders_other_people_and_the_same_person_anywhere():
    x, y = synthetic_faces(8, 2, seed=0)
    part, labels = synthetic_faces(3, 2, seed=0, identity_offset=5)
    assert labels.tolist() == [5, 5, 6, 6, 7, 7]
    assert torch.equal(part, x[10:16])  # identity 5 is the same person in either call
    new, new_labels = synthetic_faces(8, 2, seed=0, identity_offset=1000)
    assert set(new_labels.tolist()).isdisjoint(y.tolist())
    assert (new - x).abs().mean() > 0.05


def test_jitter_makes_images_of_one_identity_differ_but_less_than_identities_do():
    x, y = synthetic_faces(20, 6, seed=0)
    flat = x.flatten(1)
    d = torch.cdist(flat, flat)
    same = y.view(-1, 1) == y.view(1, -1)
    off_diag = ~torch.eye(len(y), dtype=torch.bool)
    within, between = d[same & off_diag], d[~same]
    assert within.min() > 1.0  # no two images of a person are (nearly) pixel-identical
    assert within.mean() < between.mean()


@pytest.mark.parametrize("kw, pattern", [
    (dict(num_identities=0, images_per_identity=2), "num_identities"),
    (dict(num_identities=2, images_per_identity=0), "images_per_identity"),
    (dict(num_identities=2, images_per_identity=2, size=8), "size"),
    (dict(num_identities=2, images_per_identity=2, seed=-1), "seed"),
    (dict(num_identities=2, images_per_identity=2, identity_offset=1.5), "identity_offset"),
])
def test_synthetic_faces_rejects_bad_arguments(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        synthetic_faces(**kw)


def test_face_pairs_are_balanced_distinct_and_seeded():
    labels = torch.arange(10).repeat_interleave(5) + 100
    a, b, same = face_pairs(labels, 101, seed=3)
    assert len(a) == 101 and int(same.sum()) == 50
    assert torch.equal(labels[a] == labels[b], same)
    assert bool((a != b).all())
    keys = {(min(i, j), max(i, j)) for i, j in zip(a.tolist(), b.tolist())}
    assert len(keys) == 101
    a2, b2, same2 = face_pairs(labels, 101, seed=3)
    assert torch.equal(a, a2) and torch.equal(b, b2) and torch.equal(same, same2)
    assert not torch.equal(a, face_pairs(labels, 101, seed=4)[0])
    assert 0 < int(same[:50].sum()) < 50  # shuffled, not in blocks


def test_face_pairs_rejects_impossible_requests():
    labels = torch.tensor([0, 0, 1, 2])  # one genuine pair possible
    with pytest.raises(ValueError, match="num_pairs"):
        face_pairs(labels, 4, seed=0)
    with pytest.raises(ValueError, match="labels"):
        face_pairs(torch.tensor([0.0, 1.0]), 2)
    with pytest.raises(ValueError, match="num_pairs"):
        face_pairs(labels, 1)


# ---------------------------------------------------------------- models and heads

def test_iresnet_shapes_names_and_insightface_layout():
    model = iresnet("tiny").eval()
    assert model.layers == (1, 1, 1, 1) and model.embedding_dim == 64
    out = model(torch.rand(3, 3, 32, 32))
    assert out.shape == (3, 64)
    keys = set(model.state_dict())
    for key in ("conv1.weight", "bn1.running_mean", "prelu.weight", "layer1.0.bn1.weight",
                "layer1.0.conv1.weight", "layer1.0.bn2.weight", "layer1.0.prelu.weight",
                "layer1.0.conv2.weight", "layer1.0.bn3.weight", "layer1.0.downsample.0.weight",
                "layer1.0.downsample.1.weight", "layer4.0.conv2.weight", "bn2.weight",
                "fc.weight", "features.weight", "features.running_var"):
        assert key in keys, key
    assert not model.features.weight.requires_grad  # fixed unit scale, as insightface
    assert model.layer1[0].conv2.stride == (2, 2) and model.layer1[0].conv1.stride == (1, 1)
    assert model.fc.in_features == 128 * 2 * 2
    # iresnet50 at 112x112 has insightface's parameter count (43.6 M)
    r50 = IResNet(50, width=64, input_size=112)
    assert [len(s) for s in (r50.layer1, r50.layer2, r50.layer3, r50.layer4)] == [3, 4, 14, 3]
    assert abs(sum(p.numel() for p in r50.parameters()) / 1e6 - 43.6) < 0.1
    small = IResNet(18, embedding_dim=8, input_size=64, width=4).eval()
    assert small(torch.rand(2, 3, 64, 64)).shape == (2, 8)


@pytest.mark.parametrize("kw, pattern", [
    (dict(depth=19), "depth"), (dict(depth=[1, 1, 1]), "depth"),
    (dict(depth=[1, 0, 1, 1]), "depth"),
    (dict(input_size=40), "input_size"), (dict(width=0), "width"),
    (dict(embedding_dim=-1), "embedding_dim"), (dict(dropout=1.0), "dropout"),
])
def test_iresnet_rejects_bad_arguments(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        IResNet(**kw)


def test_iresnet_rejects_wrong_input_size():
    with pytest.raises(ValueError, match="x must be"):
        iresnet("tiny")(torch.rand(2, 3, 64, 64))
    with pytest.raises(ValueError, match="depth"):
        iresnet("huge")


def _direct_logits(emb, weight, labels, s, target_fn):
    """float64, row by row: s * cos for all classes, s * target_fn(cos) for the label."""
    e = emb.double() / emb.double().norm(dim=1, keepdim=True)
    w = weight.double() / weight.double().norm(dim=1, keepdim=True)
    out = torch.empty(len(e), len(w), dtype=torch.float64)
    for i in range(len(e)):
        for j in range(len(w)):
            c = float(e[i] @ w[j])
            out[i, j] = s * (target_fn(c) if j == int(labels[i]) else c)
    return out


def _arcface_direct(m, easy):
    def target(c):
        theta = math.acos(max(-1.0, min(1.0, c)))
        if easy:
            return math.cos(theta + m) if c > 0 else c
        # insightface: past theta + m = pi, use the monotone continuation cos - m sin(m)
        return math.cos(theta + m) if theta + m < math.pi else c - m * math.sin(m)
    return target


@pytest.mark.parametrize("easy", [False, True])
def test_arcface_matches_the_margin_formula_in_float64(easy):
    torch.manual_seed(0)
    head = ArcFace(6, 5, s=64.0, m=0.5, easy_margin=easy).double()
    emb = torch.randn(9, 6, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3])
    # rows 6-8 point away from their class centre: theta + m > pi, and cos < 0
    emb[6:] = -head.weight.detach()[labels[6:]] + 1e-3 * torch.randn(3, 6, dtype=torch.float64)
    got = head(emb, labels)
    want = _direct_logits(emb, head.weight.detach(), labels, 64.0, _arcface_direct(0.5, easy))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    cos = head.cosine(emb)
    assert bool((cos.gather(1, labels.view(-1, 1))[6:] < math.cos(math.pi - 0.5)).all())
    torch.testing.assert_close(head(emb), 64.0 * cos)  # no labels: no margin


def test_cosface_matches_the_margin_formula_in_float64():
    torch.manual_seed(1)
    head = CosFace(5, 4, s=30.0, m=0.35).double()
    emb = torch.randn(7, 5, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2])
    want = _direct_logits(emb, head.weight.detach(), labels, 30.0, lambda c: c - 0.35)
    torch.testing.assert_close(head(emb, labels), want, rtol=1e-10, atol=1e-10)


def test_arcface_gradient_is_finite_when_an_embedding_is_its_class_centre():
    head = ArcFace(4, 3)
    emb = head.weight.detach()[[1, 2]].clone().requires_grad_()
    loss = fn.cross_entropy(head(emb, torch.tensor([1, 2])), torch.tensor([1, 2]))
    loss.backward()
    assert torch.isfinite(emb.grad).all() and torch.isfinite(head.weight.grad).all()


def test_heads_reject_bad_inputs():
    head = CosFace(4, 3)
    with pytest.raises(ValueError, match="labels"):
        head(torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="labels"):
        head(torch.randn(2, 4), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="embeddings"):
        head(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="num_classes"):
        ArcFace(4, 0)
    with pytest.raises(ValueError, match="m must"):
        ArcFace(4, 2, m=-0.1)


# ---------------------------------------------------------------- training

SMALL_MODEL = {"depth": [1, 1, 1, 1], "width": 4, "embedding_dim": 8, "input_size": 32}


@pytest.fixture(scope="module")
def small_data():
    return synthetic_faces(6, 4, seed=0)


def test_lr_schedules():
    cfg = FaceTrainConfig(epochs=2, lr=1.0, warmup_epochs=0.5, schedule="poly")
    lrs = [face_train._lr_at(cfg, s, total=8, per_epoch=4) for s in range(8)]
    assert lrs[:2] == [0.5, 1.0]  # two warmup steps
    assert lrs[2] == 1.0 and lrs[7] == pytest.approx((1 - 5 / 6) ** 2)
    cfg = FaceTrainConfig(epochs=2, lr=1.0, schedule="cosine")
    assert face_train._lr_at(cfg, 4, 8, 4) == pytest.approx(0.5)
    cfg = FaceTrainConfig(epochs=2, lr=0.3, schedule="constant")
    assert face_train._lr_at(cfg, 7, 8, 4) == 0.3


def _run(data, tmp_path=None, resume=False, **kw):
    x, y = data
    cfg = FaceTrainConfig(**({"epochs": 3, "batch_size": 8, "lr": 0.05, "s": 16.0} | kw))
    return train_face_model(x, y, cfg, SMALL_MODEL, checkpoint_dir=tmp_path, resume=resume,
                            progress=False)


def test_resume_after_a_kill_gives_the_uninterrupted_run(small_data, tmp_path, monkeypatch):
    ref, ref_hist = _run(small_data)
    saves = []
    original = face_train._save

    def save_then_die(*args, **kwargs):
        original(*args, **kwargs)
        saves.append(1)
        if len(saves) == 1:
            raise KeyboardInterrupt  # killed right after the first epoch's checkpoint

    monkeypatch.setattr(face_train, "_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _run(small_data, str(tmp_path))
    monkeypatch.setattr(face_train, "_save", original)
    resumed, hist = _run(small_data, str(tmp_path), resume=True)
    assert [h["epoch"] for h in hist] == [1, 2, 3] and hist == ref_hist
    for (k, v), w in zip(resumed.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(v, w), k
    model, head, state = load_face_model(str(tmp_path))
    assert state["epoch"] == 3 and head.weight.shape == (6, 8)
    for v, w in zip(model.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(v, w)
    again, _ = _run(small_data, str(tmp_path), resume=True)  # finished: nothing left to do
    assert all(torch.equal(v, w) for v, w in zip(again.state_dict().values(),
                                                 ref.state_dict().values()))
    with pytest.raises(ValueError, match="another config"):
        _run(small_data, str(tmp_path), resume=True, lr=0.01)


@pytest.mark.parametrize("kw", [
    dict(optimizer="adamw", lr=1e-3, schedule="cosine", head="cosface"),
    dict(schedule="constant", head="arcface", easy_margin=True, m=0.3, flip=False,
         grad_clip=None, warmup_epochs=1.0),
])
def test_training_options_run_and_lower_the_loss(small_data, kw):
    model, hist = _run(small_data, **(kw | {"epochs": 4}))
    assert not model.training and len(hist) == 4
    assert hist[-1]["loss"] < hist[0]["loss"] and hist[-1]["skipped"] == 0
    assert all(math.isfinite(h["loss"]) for h in hist)


def test_dropout_and_labels_with_gaps_train(small_data, tmp_path):
    x, y = small_data
    cfg = FaceTrainConfig(epochs=1, batch_size=8, s=16.0)
    model, hist = train_face_model(x, y * 10 + 7, cfg, SMALL_MODEL | {"dropout": 0.2},
                                   checkpoint_dir=str(tmp_path), progress=False)
    assert model.dropout.p == 0.2 and len(hist) == 1
    _, head, state = load_face_model(str(tmp_path))
    assert state["classes"] == [7, 17, 27, 37, 47, 57] and head.num_classes == 6


def test_non_finite_steps_are_skipped_with_a_warning(small_data, monkeypatch):
    calls, build = [], face_train.iresnet

    def poisoned(**kw):
        model = build(**kw)

        def hook(module, args, out):  # NaN activations on the first step only
            calls.append(1)
            return out * float("nan") if len(calls) == 1 else out

        model.conv1.register_forward_hook(hook)
        return model

    monkeypatch.setattr(face_train, "iresnet", poisoned)
    with pytest.warns(TrustfastWarning, match="non-finite"):
        model, hist = _run(small_data, epochs=1)
    assert hist[0]["skipped"] == 1 and len(calls) > 1
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())


@pytest.mark.parametrize("kw, pattern", [
    (dict(head="sphereface"), "head"), (dict(optimizer="lamb"), "optimizer"),
    (dict(schedule="step"), "schedule"), (dict(epochs=0), "epochs"), (dict(lr=0.0), "lr"),
    (dict(batch_size=1.5), "batch_size"), (dict(easy_margin=True, head="cosface"), "easy_margin"),
    (dict(grad_clip=0.0), "grad_clip"), (dict(warmup_epochs=5.0), "warmup_epochs"),
])
def test_train_config_rejects_bad_values(small_data, kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        _run(small_data, **kw)


def test_train_rejects_bad_data(small_data):
    x, y = small_data
    cfg = FaceTrainConfig(epochs=1)
    with pytest.raises(ValueError, match=r"images must lie in \[0, 1\]"):
        train_face_model(x * 2, y, cfg, SMALL_MODEL)
    with pytest.raises(ValueError, match="labels must have one entry"):
        train_face_model(x, y[:-1], cfg, SMALL_MODEL)
    with pytest.raises(ValueError, match="32x32"):
        train_face_model(torch.rand(4, 3, 16, 16), y[:4], cfg, SMALL_MODEL)
    with pytest.raises(ValueError, match="resume"):
        train_face_model(x, y, cfg, SMALL_MODEL, resume=True)


# ---------------------------------------------------------------- the verification protocol

def test_ten_fold_accuracy_on_a_hand_computed_case():
    # 20 pairs, 2 per fold: genuine at d = 0.5, impostors at d = 3.0, except pair 0: a genuine
    # pair at d = 2.0. Any fold whose training part holds pair 0 picks a threshold in
    # (2.0, 3.0] and gets its 2 held-out pairs right; fold 0 trains without it, picks the
    # smallest threshold above 0.5 and misses pair 0: fold accuracies [0.5, 1, ..., 1].
    same = torch.tensor([True, False] * 10)
    d = torch.where(same, 0.5, 3.0).double()
    d[0] = 2.0
    out = kfold_accuracy(d, same, folds=10, thresholds=[0.25, 1.0, 2.5, 3.5])
    assert out["fold_accuracies"] == [0.5] + [1.0] * 9
    assert out["thresholds"] == [1.0] + [2.5] * 9
    assert out["accuracy"] == pytest.approx(0.95)
    assert out["std"] == pytest.approx(0.15)  # population std: sqrt((9 * .05^2 + .45^2) / 10)
    assert out["best_threshold"] == 2.5
    grid = kfold_accuracy(d, same)  # insightface's grid 0, 0.01, ..., 3.99
    assert grid["accuracy"] == pytest.approx(0.95)
    assert grid["thresholds"][0] == pytest.approx(0.51)
    assert grid["thresholds"][1] == pytest.approx(2.01)


def test_ten_fold_uses_sklearns_contiguous_folds():
    # 23 pairs -> fold sizes 3, 3, 3, 2, ... (KFold(10) without shuffle); a single wrong pair at
    # index 2 costs its fold (size 3) one third
    same = torch.tensor([i % 2 == 0 for i in range(23)])
    d = torch.where(same, 0.2, 1.8).double()
    d[2] = 3.0  # genuine pair beyond every impostor: wrong at any useful threshold
    out = kfold_accuracy(d, same, folds=10, thresholds=[1.0])
    assert out["fold_accuracies"][0] == pytest.approx(2 / 3)
    assert out["fold_accuracies"][1:] == [1.0] * 9


def test_tar_at_far_on_a_hand_computed_case():
    same = torch.tensor([True] * 4 + [False] * 10)
    d = torch.tensor([0.1, 0.2, 0.3, 0.9, 0.25, 0.5, 0.6, 0.7, 0.8, 1.0, 1.1, 1.2, 1.3, 1.4])
    # far=0.1 allows 1 impostor: threshold = 2nd-smallest impostor (0.5): genuine < 0.5: 3/4
    # far=0.05 allows none: threshold 0.25: genuine 0.1, 0.2 pass: 2/4
    # far=0.3 allows 3: threshold 0.7 -> 3/4; far=1: all accepted -> 1
    assert tar_at_far(d, same, 0.1) == 0.75
    assert tar_at_far(d, same, [0.05, 0.1, 0.3, 1.0]) == [0.5, 0.75, 0.75, 1.0]
    with pytest.raises(ValueError, match="far"):
        tar_at_far(d, same, 0.0)
    with pytest.raises(ValueError, match="genuine"):
        tar_at_far(d[4:], same[4:], 0.1)


def test_best_threshold_is_exact():
    same = torch.tensor([True, True, False, False, True])
    d = torch.tensor([0.2, 0.4, 1.0, 1.6, 1.3])
    t, acc = best_threshold(d, same)
    assert t == pytest.approx(0.7) and acc == pytest.approx(0.8)
    assert best_threshold(d, same, thresholds=[1.5])[1] == pytest.approx(0.8)


def test_protocol_rejects_bad_inputs():
    d, same = torch.rand(10), torch.rand(10) > 0.5
    with pytest.raises(ValueError, match="folds"):
        kfold_accuracy(d, same, folds=11)
    with pytest.raises(TypeError, match="same must be a bool"):
        kfold_accuracy(d, same.float())
    with pytest.raises(ValueError, match="distances"):
        kfold_accuracy(d.view(2, 5), same)
    with pytest.raises(ValueError, match="finite"):
        kfold_accuracy(torch.full((10,), float("nan")), same)
    with pytest.raises(ValueError, match="emb_a"):
        verification_accuracy(torch.rand(10, 3), torch.rand(10, 4), same)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = iresnet("tiny")
    model.train()(torch.rand(16, 3, 32, 32))  # non-trivial BN running statistics
    return model


def test_embed_is_normalized_flip_invariant_and_keeps_the_mode(tiny_model):
    x = torch.rand(5, 3, 32, 32)
    e = embed(tiny_model, x, batch_size=2)
    assert e.shape == (5, 64) and tiny_model.training
    torch.testing.assert_close(e.norm(dim=1), torch.ones(5))
    torch.testing.assert_close(embed(tiny_model, x.flip(-1)), e, rtol=1e-5, atol=1e-5)
    plain = embed(tiny_model, x, flip=False)
    with torch.no_grad():
        torch.testing.assert_close(plain, fn.normalize(tiny_model.eval()(x), dim=1))
    tiny_model.train()
    assert not torch.allclose(plain, e)


def test_face_verifier_is_differentiable_and_consistent(tiny_model):
    xa, xb = torch.rand(6, 3, 32, 32), torch.rand(6, 3, 32, 32)
    same = torch.tensor([True, False, True, False, True, False])
    t = fit_threshold(tiny_model, xa, xb, same)
    verifier = FaceVerifier.fit(tiny_model, xa, xb, same)
    assert verifier.threshold == t and not tiny_model.training
    x = xa.clone().requires_grad_()
    ea = verifier.embed(x)
    eb = verifier(xb)
    torch.testing.assert_close(ea.detach(), embed(tiny_model, xa))
    sim = verifier.similarity(ea, eb)
    sim.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    dist = verifier.distance(ea.detach(), eb)
    torch.testing.assert_close(dist, 2 - 2 * sim.detach())
    assert torch.equal(verifier.match(ea.detach(), eb), dist < t)
    above = sim.detach() > verifier.similarity_threshold
    assert torch.equal(verifier.match(ea.detach(), eb), above)
    assert torch.equal(verifier.verify(xa, xb), verify(tiny_model, xa, xb, t))
    out = evaluate_pairs(tiny_model, xa, xb, same, folds=2, far=[0.5])
    assert {"accuracy", "std", "thresholds", "best_threshold", "tar@far=0.5"} <= set(out)
    with pytest.raises(ValueError, match="threshold"):
        FaceVerifier(tiny_model, 5.0)
    with pytest.raises(ValueError, match="images_a"):
        verify(tiny_model, xa[0], xb, t)


# ---------------------------------------------------------------- datasets on disk

def _write_png(path, rgb, size=8):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), rgb, dtype=np.uint8)).save(path)


def test_image_folder_faces_reads_a_casia_style_tree(tmp_path):
    _write_png(tmp_path / "bob" / "b1.png", (0, 128, 255))
    _write_png(tmp_path / "alice" / "a2.png", (10, 20, 30))
    _write_png(tmp_path / "alice" / "a1.png", (255, 0, 0))
    (tmp_path / "alice" / "notes.txt").write_text("not an image")
    data = ImageFolderFaces(str(tmp_path), size=8)
    assert data.classes == ["alice", "bob"] and len(data) == 3
    assert [label for _, label in data.samples] == [0, 0, 1]
    x, label = data[0]  # alice/a1.png
    assert x.shape == (3, 8, 8) and label == 0
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(data[2][0][:, 3, 3], torch.tensor([0, 128, 255]) / 255.0)
    images, labels = ImageFolderFaces(str(tmp_path), size=16).tensors()
    assert images.shape == (3, 3, 16, 16) and labels.tolist() == [0, 0, 1]
    assert float(images.min()) >= 0 and float(images.max()) <= 1
    with pytest.raises(ValueError, match="root"):
        ImageFolderFaces(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="size"):
        ImageFolderFaces(str(tmp_path), size=0)


def test_read_pairs_parses_lfw_pairs(tmp_path):
    for name, n in (("Ann_Lee", 1), ("Ann_Lee", 2), ("Bo", 1), ("Bo", 3)):
        _write_png(tmp_path / "lfw" / name / f"{name}_{n:04d}.png", (n * 40, 0, 0))
    pairs_file = tmp_path / "pairs.txt"
    pairs_file.write_text("1\t2\nAnn_Lee\t1\t2\n\nAnn_Lee 2 Bo 3\n")
    root = str(tmp_path / "lfw")
    pairs = read_pairs(str(pairs_file), root, ext="png")
    assert pairs == [
        (f"{root}/Ann_Lee/Ann_Lee_0001.png", f"{root}/Ann_Lee/Ann_Lee_0002.png", True),
        (f"{root}/Ann_Lee/Ann_Lee_0002.png", f"{root}/Bo/Bo_0003.png", False),
    ]
    assert read_pairs(str(pairs_file), "r")[0][0] == "r/Ann_Lee/Ann_Lee_0001.jpg"
    a, b, same = load_pairs(pairs, size=8)
    assert a.shape == b.shape == (2, 3, 8, 8) and same.tolist() == [True, False]
    torch.testing.assert_close(b[1, 0, 0, 0], torch.tensor(120 / 255.0))
    pairs_file.write_text("Ann_Lee 1 2\nAnn_Lee 1\n")
    with pytest.raises(ValueError, match=":2: expected"):
        read_pairs(str(pairs_file), root)
    pairs_file.write_text("Ann_Lee one 2\n")
    with pytest.raises(ValueError, match="image number"):
        read_pairs(str(pairs_file), root)


# ---------------------------------------------------------------- end to end (T2)

def _train_and_verify(head: str):
    start = time.perf_counter()
    x, y = synthetic_faces(60, 15, size=32, seed=0)  # identities 0..59
    xt, yt = synthetic_faces(40, 10, size=32, seed=0, identity_offset=100_000)  # unseen
    a, b, same = face_pairs(yt, 600, seed=0)
    cfg = FaceTrainConfig(epochs=10, batch_size=64, lr=0.1, warmup_epochs=1.0, head=head,
                          s=32.0, seed=0)
    model, hist = train_face_model(x, y, cfg, progress=False)
    result = evaluate_pairs(model, xt[a], xt[b], same)
    pixels = fn.normalize(xt.flatten(1), dim=1)
    baseline = verification_accuracy(pixels[a], pixels[b], same)
    seconds = time.perf_counter() - start
    print(f"{head}: 10-fold accuracy {result['accuracy']:.3f} +- {result['std']:.3f}, "
          f"TAR@FAR=1e-2 {result['tar@far=0.01']:.3f}, pixel baseline "
          f"{baseline['accuracy']:.3f}, {seconds:.1f} s")
    assert set(yt.tolist()).isdisjoint(y.tolist())
    return result, baseline, hist, seconds


@pytest.mark.slow
@pytest.mark.parametrize("head", ["arcface", "cosface"])
def test_trained_model_verifies_unseen_identities(head):
    result, baseline, hist, seconds = _train_and_verify(head)
    assert hist[-1]["accuracy"] > 0.95 and hist[-1]["skipped"] == 0
    assert result["accuracy"] >= 0.90
    assert result["accuracy"] >= baseline["accuracy"] + 0.10  # pixels do not solve it
    assert seconds < 120
