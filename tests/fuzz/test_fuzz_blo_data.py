"""T3 fuzz (hypothesis) of trustfast.blo and trustfast.data: mismatched trees, solver options
of the wrong kind or range, bad folders, files and fractions end in a TypeError / ValueError
naming the argument (or in the documented result), never in a crash or an unrelated error."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import TensorDataset

from fuzz.refusal import refused
from trustfast import blo
from trustfast import data as tfdata

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

FUZZ = settings(max_examples=20, deadline=None)

ANYTHING = st.one_of(st.none(), st.booleans(), st.integers(-3, 300),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4),
                     st.lists(st.integers(0, 3), max_size=2))




def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# ---------------------------------------------------------------- blo

A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
PARAMS = {"w": torch.tensor([0.5, -1.0], dtype=torch.float64),
          "b": torch.tensor(0.3, dtype=torch.float64)}


def quad(p):
    return 0.5 * p["w"] @ A @ p["w"] + p["b"] ** 2 * p["w"].sum()


def matvec(v):
    return {"w": A @ v["w"], "b": 2.0 * v["b"]}


B = {"w": torch.tensor([1.0, 2.0], dtype=torch.float64), "b": torch.tensor(1.0,
                                                                            dtype=torch.float64)}

# A v of the wrong tree and the exception it must raise (all name v).
BAD_V = {
    "missing_key": ({"w": PARAMS["w"]}, ValueError),
    "extra_key": ({**PARAMS, "c": PARAMS["b"]}, ValueError),
    "list": ([PARAMS["w"], PARAMS["b"]], ValueError),
    "shape": ({"w": torch.ones(3, dtype=torch.float64), "b": PARAMS["b"]}, ValueError),
    "dtype": ({"w": PARAMS["w"].float(), "b": PARAMS["b"]}, ValueError),
    "leaf": ({"w": [0.5, -1.0], "b": PARAMS["b"]}, (TypeError, ValueError)),
    "none": (None, (TypeError, ValueError)),
}


@FUZZ
@given(case=st.sampled_from(sorted(BAD_V)), mode=st.sampled_from(blo.HVP_MODES))
def test_hvp_mismatched_trees(case, mode):
    v, error = BAD_V[case]
    refused(lambda: blo.hvp(quad, PARAMS, v, mode=mode), "v", error)


def test_hvp_operator_checks_each_v():
    op = blo.hvp_operator(quad, PARAMS)
    refused(lambda: op(BAD_V["shape"][0]), "v", ValueError)
    out = op(PARAMS)
    assert set(out) == {"w", "b"}


@FUZZ
@given(mode=ANYTHING, batched=ANYTHING, eps=ANYTHING)
def test_hvp_options_fuzz(mode, batched, eps):
    def call():
        return blo.hvp(quad, PARAMS, PARAMS, mode=mode, batched=batched, eps=eps)

    ok_mode = mode in blo.HVP_MODES and isinstance(mode, str)
    ok_batched = batched is False or batched is True
    ok_eps = eps is None or (is_number(eps) and eps > 0) or mode != "finite_diff"
    if not ok_mode:
        refused(call, "mode")
    elif not ok_batched:
        refused(call, "batched", TypeError)
    elif batched is True:
        refused(call, "v", ValueError)  # PARAMS has no batch dim
    elif not ok_eps:
        refused(call, "eps")
    else:
        out = call()
        assert all(bool(torch.isfinite(t).all()) for t in out.values())


def test_hvp_args_must_be_a_tuple():
    refused(lambda: blo.hvp(lambda p, x: quad(p) * x, PARAMS, PARAMS, args=2.0), "args",
            TypeError)
    refused(lambda: blo.hvp("quad", PARAMS, PARAMS), "f", TypeError)


SOLVER_CALLS = {
    "cg": lambda **kw: blo.cg(matvec, B, **kw),
    "neumann": lambda **kw: blo.neumann(matvec, B, alpha=0.2, **kw),
    "fixed_point": lambda **kw: blo.solve("fixed_point", matvec, B, alpha=0.2, **kw),
    "solve_cg": lambda **kw: blo.solve("cg", matvec, B, **kw),
}


@pytest.mark.parametrize("solver", sorted(SOLVER_CALLS))
@FUZZ
@given(tol=ANYTHING, max_iter=ANYTHING, damping=ANYTHING)
def test_solver_options_fuzz(solver, tol, max_iter, damping):
    def call():
        return SOLVER_CALLS[solver](tol=tol, max_iter=max_iter, damping=damping, warn=False)

    try:
        result = call()
    except (TypeError, ValueError) as err:
        assert any(k in str(err) for k in ("tol", "max_iter", "damping")), err
        # and it was right to refuse
        assert not (is_number(tol) and tol > 0 and is_int(max_iter) and max_iter >= 1
                    and is_number(damping) and damping >= 0), err
        return
    assert is_number(tol) and tol > 0, tol
    assert (is_int(max_iter) or float(max_iter).is_integer()) and max_iter >= 1, max_iter
    assert is_number(damping) and damping >= 0, damping
    assert isinstance(result, blo.SolveResult)
    assert all(bool(torch.isfinite(t).all()) for t in result.x.values())


@pytest.mark.parametrize("max_iter", ["10", 2.5, None, [10]])
def test_max_iter_of_the_wrong_kind_is_a_type_error(max_iter):
    for call in SOLVER_CALLS.values():
        refused(lambda call=call: call(max_iter=max_iter), "max_iter", TypeError)


def test_solver_inputs():
    refused(lambda: blo.cg("A", B), "matvec", TypeError)
    refused(lambda: blo.cg(matvec, B, x0={"w": torch.ones(2)}), "x0", ValueError)
    nan_b = {"w": torch.tensor([math.nan, 1.0], dtype=torch.float64), "b": B["b"]}
    refused(lambda: blo.cg(matvec, nan_b), "b", ValueError)
    refused(lambda: blo.neumann(matvec, nan_b), "b", ValueError)
    refused(lambda: blo.solve("gmres", matvec, B), "solver", ValueError)
    refused(lambda: blo.solve(None, matvec, B), "solver", TypeError)
    refused(lambda: blo.fixed_point(matvec, B, scale=-1.0), "scale", ValueError)
    refused(lambda: blo.fixed_point(None, B), "step", TypeError)


def outer(t, lm):
    return ((t["w"] - 1.0) ** 2).sum()


def inner(t, lm):
    return ((t["w"] - lm["a"]) ** 2).sum() + 0.1 * (t["w"] ** 2).sum()


THETA = {"w": torch.zeros(2, dtype=torch.float64)}
LAM = {"a": torch.ones(2, dtype=torch.float64)}


@FUZZ
@given(solver=ANYTHING, on_fail=ANYTHING)
def test_implicit_grad_choices_fuzz(solver, on_fail):
    def call():
        return blo.implicit_grad(outer, inner, THETA, LAM, solver=solver, on_fail=on_fail)

    if not (isinstance(solver, str) and solver in blo.SOLVERS):
        refused(call, "solver")
    elif not (isinstance(on_fail, str) and on_fail in ("warn", "raise")):
        refused(call, "on_fail")
    else:
        assert set(call()) == {"a"}


@FUZZ
@given(steps=ANYTHING, lr=ANYTHING, truncate=ANYTHING)
def test_unrolled_grad_numbers_fuzz(steps, lr, truncate):
    steps = steps if not is_int(steps) else min(steps, 20)

    def call():
        return blo.unrolled_grad(outer, inner, THETA, LAM, steps=steps, lr=lr, truncate=truncate)

    try:
        grads, final = call()
    except (TypeError, ValueError) as err:
        assert any(k in str(err) for k in ("steps", "lr", "truncate")), err
        return
    assert is_int(steps) and steps >= 1 and is_number(lr) and lr > 0
    assert truncate is None or (is_int(truncate) and 1 <= truncate <= steps)
    assert set(grads) == {"a"}


@FUZZ
@given(penalty=ANYTHING, steps=ANYTHING, lr=ANYTHING)
def test_penalty_grad_numbers_fuzz(penalty, steps, lr):
    steps = steps if not is_int(steps) else min(steps, 20)
    try:
        out = blo.penalty_grad(outer, inner, THETA, LAM, penalty=penalty, steps=steps, lr=lr)
    except (TypeError, ValueError) as err:
        assert any(k in str(err) for k in ("penalty", "steps", "lr")), err
        return
    except FloatingPointError as err:  # documented: a diverging run raises, named
        assert "non-finite hypergradient" in str(err)
        return
    assert is_number(penalty) and penalty > 0 and is_number(lr) and lr > 0
    assert set(out.grads) == {"a"}


def test_losses_must_be_callable():
    refused(lambda: blo.implicit_grad("F", inner, THETA, LAM), "outer_loss", TypeError)
    refused(lambda: blo.unrolled_grad(outer, None, THETA, LAM, steps=2, lr=0.1), "inner_loss",
            TypeError)
    refused(lambda: blo.penalty_grad(outer, inner, THETA, LAM, y0={"w": torch.ones(3)}), "y0",
            ValueError)
    refused(lambda: blo.module_loss(torch.nn.Linear(2, 1), "mse"), "loss_fn", TypeError)


# ---------------------------------------------------------------- data


@FUZZ
@given(test_fraction=ANYTHING, seed=ANYTHING, size=st.one_of(ANYTHING, st.integers(7, 12)),
       channels=ANYTHING)
def test_digits_arguments_fuzz(test_fraction, seed, size, channels):
    try:
        train, test = tfdata.digits(test_fraction, seed, size, channels)
    except (TypeError, ValueError) as err:
        assert any(k in str(err) for k in ("test_fraction", "seed", "size", "channels")), err
        return
    assert is_number(test_fraction) and 0 < test_fraction < 1
    assert is_int(seed) and seed >= 0 and 8 <= size <= 256 and channels in (1, 3)
    x, y = train[0]
    assert x.shape == (channels, size, size) and 0 <= float(x.min()) <= float(x.max()) <= 1


DATA = TensorDataset(torch.rand(10, 1, 4, 4), torch.arange(10) % 2)


@FUZZ
@given(test_fraction=ANYTHING, seed=ANYTHING)
def test_split_dataset_fuzz(test_fraction, seed):
    try:
        train, test = tfdata.split_dataset(DATA, test_fraction, seed)
    except (TypeError, ValueError) as err:
        assert "test_fraction" in str(err) or "seed" in str(err), err
        return
    assert is_number(test_fraction) and 0 < test_fraction < 1 and is_int(seed) and seed >= 0
    assert len(train) + len(test) == 10 and len(test) >= 1


def test_split_dataset_refuses_non_datasets():
    refused(lambda: tfdata.split_dataset(5, 0.2), "dataset", TypeError)


@FUZZ
@given(spec=st.one_of(st.text(max_size=10), st.none(), st.integers(), st.sampled_from([
    "imagefolder:", "imagefolder:/nonexistent/folder", "npz:/nonexistent.npz", "cifar10:",
    "digits:/tmp", "digits", "colored_digits", "npz:", "mnist", "imagefolder:/proc/cpuinfo",
])))
def test_load_image_data_spec_fuzz(spec):
    try:
        train, test = tfdata.load_image_data(spec, size=8)
    except (TypeError, ValueError) as err:
        assert "data" in str(err), err
        return
    assert spec in ("digits", "colored_digits")
    assert len(train) > 0 and len(test) > 0


@pytest.fixture
def folders(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"not a png")
    (tmp_path / "classes" / "cat").mkdir(parents=True)
    (tmp_path / "classes" / "cat" / "broken.png").write_bytes(b"\x89PNG broken")
    (tmp_path / "file.txt").write_text("hello")
    np.save(tmp_path / "single.npy", np.zeros((2, 3)))
    np.savez(tmp_path / "wrong_keys.npz", a=np.zeros(3))
    np.savez(tmp_path / "float_labels.npz", x=np.zeros((2, 1, 4, 4), np.float32),
             y=np.array([0.5, 1.0]))
    np.savez(tmp_path / "out_of_range.npz", x=np.full((2, 1, 4, 4), 2.0, np.float32),
             y=np.array([0, 1]))
    return tmp_path


@pytest.mark.parametrize("make", [
    lambda d: tfdata.ImageFolder(d / "missing"), lambda d: tfdata.ImageFolder(d / "empty"),
    lambda d: tfdata.ImageFolder(d / "flat"), lambda d: tfdata.ImageFolder(d / "file.txt"),
    lambda d: tfdata.ImageFolder(d / "classes")[0], lambda d: tfdata.ImageFolder(3),
    lambda d: tfdata.NpzDataset(d / "missing.npz"), lambda d: tfdata.NpzDataset(d / "file.txt"),
    lambda d: tfdata.NpzDataset(d / "single.npy"),
    lambda d: tfdata.NpzDataset(d / "wrong_keys.npz"),
    lambda d: tfdata.NpzDataset(d / "float_labels.npz"),
    lambda d: tfdata.NpzDataset(d / "out_of_range.npz"),
    lambda d: tfdata.NpzDataset(d / "wrong_keys.npz", split="val"),
    lambda d: tfdata.CIFAR10(d / "empty"), lambda d: tfdata.CIFAR10(d / "file.txt"),
    lambda d: tfdata.CIFAR10(str(d), train="yes"),
    lambda d: tfdata.load_image_data(f"imagefolder:{d / 'empty'}"),
    lambda d: tfdata.load_image_data(f"npz:{d / 'file.txt'}"),
], ids=lambda f: "case")
def test_bad_folders_and_files_are_refused(folders, make):
    try:
        make(folders)
    except (TypeError, ValueError) as err:
        text = str(err)
        assert any(k in text for k in ("root", "path", "data", "split", "train", str(folders))), \
            text
        return
    pytest.fail("accepted a bad folder or file")


@FUZZ
@given(n_id=ANYTHING, per_id=ANYTHING, size=st.one_of(ANYTHING, st.integers(15, 17)),
       seed=ANYTHING)
def test_synthetic_faces_fuzz(n_id, per_id, size, seed):
    small = all(not is_int(v) or v <= 4 for v in (n_id, per_id))
    if not small or (is_int(size) and size > 20):
        return  # a legitimate large request, not a bad input
    try:
        x, y = tfdata.synthetic_faces(n_id, per_id, size, seed)
    except (TypeError, ValueError) as err:
        assert any(k in str(err) for k in ("num_identities", "images_per_identity", "size",
                                           "seed")), err
        return
    assert is_int(n_id) and n_id >= 1 and is_int(per_id) and per_id >= 1
    assert x.shape == (n_id * per_id, 3, size, size) and bool(torch.isfinite(x).all())


@FUZZ
@given(num_pairs=ANYTHING, labels=st.sampled_from(["ok", "float", "list", "2d", "none"]))
def test_face_pairs_fuzz(num_pairs, labels):
    good = torch.tensor([0, 0, 1, 1, 2, 2, 3])
    arg = {"ok": good, "float": good.float(), "list": good.tolist(), "2d": good[None],
           "none": None}[labels]
    try:
        a, b, same = tfdata.face_pairs(arg, num_pairs)
    except (TypeError, ValueError) as err:
        assert "labels" in str(err) or "num_pairs" in str(err), err
        return
    assert labels == "ok" and is_int(num_pairs) and num_pairs >= 2
    assert len(a) == num_pairs and bool((a != b).all())


@pytest.mark.parametrize("bad", [5, "dataset", [1, 2, 3], None])
def test_dataset_tensors_refuses_non_datasets(bad):
    refused(lambda: tfdata.dataset_tensors(bad), "dataset")
