"""T3 (issue 17): bad input to every public op in `trustfast.ops` and to the masked optimizers.

Hypothesis draws one corruption at a time (a wrong type, dtype, shape or device, NaN/Inf, a value
out of range) into an otherwise valid call. Each must end in a TypeError / ValueError whose
message names the corrupted argument, or in the documented handling (a non-finite optimizer
step writes nothing), never in a crash, a silent acceptance or an unrelated exception. Native
calls that could abort the process run in a subprocess.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trustfast.ops import (
    attention,
    masked_adamw_step,
    masked_adamw_step_reference,
    masked_sgd_step,
    masked_sgd_step_reference,
    pgd_step,
    resolve_backend,
    select_backend,
    sequence_nll,
)
from trustfast.optim import MaskedAdamW, MaskedSGD

FUZZ = settings(max_examples=25, deadline=None)
REFUSED = (TypeError, ValueError)

# ---------------------------------------------------------------------- corruptions

TENSOR_CORRUPTIONS = ("int64", "complex", "bool", "extra_dim", "other_size", "meta", "nan",
                      "inf", "list", "string", "none", "numpy")
# corruptions every tensor argument refuses whatever its values (NaN/Inf depend on the op)
ALWAYS = ("int64", "complex", "extra_dim", "other_size", "meta", "list", "string", "numpy")
BAD_SCALARS = ("0.1", None, [0.1], math.nan, math.inf, -1.0, True, 1 + 0j, torch.ones(2))


def corrupt(t: torch.Tensor, how: str):
    """`t` spoiled one way (a new object: `t` itself is not modified)."""
    if how == "int64":
        return t.to(torch.int64)
    if how == "complex":
        return t.to(torch.complex64)
    if how == "bool":
        return t != 0
    if how == "extra_dim":
        return t.unsqueeze(0)
    if how == "other_size":
        return torch.cat([t, t], dim=-1)
    if how == "meta":
        return torch.empty_like(t, device="meta")
    if how == "nan":
        out = t.clone()
        out.view(-1)[0] = math.nan
        return out
    if how == "inf":
        out = t.clone()
        out.view(-1)[-1] = math.inf
        return out
    if how == "list":
        return t.tolist()
    if how == "string":
        return "tensor"
    if how == "none":
        return None
    if how == "numpy":
        return t.numpy()
    raise AssertionError(how)


def same(value, number: float) -> bool:
    """`value` is the Python float `number` (never compares a tensor)."""
    return type(value) is float and value == number


def assert_refused(call, name: str, kinds=REFUSED) -> None:
    """`call()` raises one of `kinds` and its message names `name`."""
    try:
        call()
    except kinds as exc:
        assert name in str(exc), f"error does not name {name!r}: {exc!r}"
        return
    raise AssertionError(f"accepted a bad {name}")


# ---------------------------------------------------------------------- masked update ops


def _sgd_args():
    g = torch.Generator().manual_seed(0)
    p = [torch.rand(3, 4, generator=g), torch.rand(5, generator=g)]
    return dict(params=p, grads=[torch.rand_like(t) for t in p],
                momentum_bufs=[torch.zeros_like(t) for t in p],
                masks=[torch.ones(3, 4, dtype=torch.bool), None])


def _call_sgd(args, **hyper):
    hyper = dict(lr=0.1, momentum=0.9) | hyper
    return masked_sgd_step(args["params"], args["grads"], args["momentum_bufs"], args["masks"],
                           backend="torch" if hyper.pop("torch", False) else None, **hyper)


@FUZZ
@given(arg=st.sampled_from(["params", "grads", "momentum_bufs", "masks"]),
       index=st.sampled_from([0, 1]), how=st.sampled_from(TENSOR_CORRUPTIONS))
def test_masked_sgd_step_tensor_arguments(arg, index, how):
    args = _sgd_args()
    if arg == "masks" and index == 1:
        index = 0  # masks[1] is None on purpose
    before = [t.clone() for t in args["params"]]
    args[arg][index] = corrupt(args[arg][index], how)
    name = f"{arg}[{index}]" if arg != "params" or how != "meta" else "params"
    nonfinite = how in ("nan", "inf") and arg != "masks"
    if how in ("nan", "inf") and arg == "masks":
        _call_sgd(args)  # a bool mask holds no NaN: corrupt() set a True, still a valid mask
        return
    if nonfinite:  # documented: nothing is written, FloatingPointError under "raise"
        with pytest.raises(FloatingPointError, match="nothing was written"):
            _call_sgd(args)
    elif how == "none" and arg == "masks":
        _call_sgd(args)  # None is "no mask" for this tensor: valid
        return
    elif how == "bool" and arg != "masks":
        assert_refused(lambda: _call_sgd(args), arg)
    elif how == "bool":
        _call_sgd(args)  # a bool mask is the valid kind
        return
    else:
        assert_refused(lambda: _call_sgd(args), arg if how == "meta" else name)
    for i, t in enumerate(before):
        if arg == "params" and i == index:
            continue
        assert torch.equal(args["params"][i], t), "a refused call modified params"


@FUZZ
@given(key=st.sampled_from(["lr", "momentum", "dampening", "weight_decay", "l1"]),
       value=st.sampled_from(BAD_SCALARS))
def test_masked_sgd_step_hyperparameters(key, value):
    args = _sgd_args()
    if key == "dampening" and same(value, -1.0):
        value = 2.0
    assert_refused(lambda: _call_sgd(args, **{key: value}), key)


@FUZZ
@given(key=st.sampled_from(["lr", "beta1", "beta2", "eps", "weight_decay", "l1", "step"]),
       value=st.sampled_from((*BAD_SCALARS, 1.0)))
def test_masked_adamw_step_hyperparameters(key, value):
    p = [torch.rand(4)]
    if key == "step" and same(value, 1.0):
        value = 0
    if key in ("lr", "eps", "weight_decay", "l1") and same(value, 1.0):
        value = -2.0
    hyper = dict(step=1, lr=1e-3) | {key: value}
    assert_refused(lambda: masked_adamw_step(p, [torch.rand(4)], [torch.zeros(4)],
                                             [torch.zeros(4)], None, **hyper), key)


@FUZZ
@given(which=st.sampled_from(["nonfinite", "l1_mode", "nesterov", "backend"]),
       value=st.sampled_from(["ignore", 3, None, "cuda"]))
def test_masked_step_choices(which, value):
    args = _sgd_args()
    if which == "backend" and value is None:
        value = "gpu"
    if which == "nesterov" and value is None:
        value = "yes"
    assert_refused(lambda: _call_sgd(args, **{which: value}), which)


@FUZZ
@given(bad=st.sampled_from([math.nan, math.inf, -math.inf, 1e38]),
       fn=st.sampled_from(["sgd", "adamw", "sgd_ref", "adamw_ref"]),
       dtype=st.sampled_from([torch.float32, torch.float16]))
def test_masked_steps_never_write_nonfinite(bad, fn, dtype):
    p = [torch.full((6,), 0.5, dtype=dtype)]
    g = [torch.full((6,), 0.1, dtype=dtype)]
    g[0][3] = bad
    s1, s2 = [torch.full_like(p[0], 0.25)], [torch.ones_like(p[0])]
    call = {
        "sgd": lambda: masked_sgd_step(p, g, s1, None, lr=10.0, momentum=0.9),
        "adamw": lambda: masked_adamw_step(p, g, s1, s2, None, step=1, lr=10.0),
        "sgd_ref": lambda: masked_sgd_step_reference(p, g, s1, None, lr=10.0, momentum=0.9),
        "adamw_ref": lambda: masked_adamw_step_reference(p, g, s1, s2, None, step=1, lr=10.0),
    }[fn]
    if dtype == torch.float16 and bad == 1e38:
        g[0][3] = math.inf  # 1e38 is inf in float16 already
    with pytest.raises(FloatingPointError):
        call()
    assert torch.equal(p[0], torch.full_like(p[0], 0.5))
    assert torch.equal(s1[0], torch.full_like(p[0], 0.25))


def test_all_meta_calls_are_refused_not_crashed():
    m = [torch.empty(3, device="meta")]
    assert_refused(lambda: masked_sgd_step(m, m, None, None, lr=0.1), "meta")
    assert_refused(lambda: masked_adamw_step(m, m, m, m, None, step=1, lr=0.1), "meta")
    x = torch.empty(2, 3, device="meta")
    assert_refused(lambda: pgd_step(x, x, x, eps=0.1, alpha=0.01), "meta")
    assert_refused(lambda: pgd_step(x, x, x, eps=torch.ones(2, device="meta"), alpha=0.01),
                   "meta")


@FUZZ
@given(arg=st.sampled_from(["params", "grads", "momentum_bufs"]),
       how=st.sampled_from(ALWAYS), adamw=st.booleans())
def test_masked_references_check_their_tensors(arg, how, adamw):
    args = _sgd_args()
    args[arg][0] = corrupt(args[arg][0], how)
    if adamw:
        sq = [torch.zeros_like(t) for t in _sgd_args()["params"]]
        name = "exp_avgs" if arg == "momentum_bufs" else arg
        call = lambda: masked_adamw_step_reference(  # noqa: E731
            args["params"], args["grads"], args["momentum_bufs"], sq, None, step=1, lr=0.1)
    else:
        name = arg
        call = lambda: masked_sgd_step_reference(  # noqa: E731
            args["params"], args["grads"], args["momentum_bufs"], None, lr=0.1, momentum=0.9)
    assert_refused(call, "params" if how == "meta" and arg == "params" else name)


# ---------------------------------------------------------------------- pgd_step


def _pgd_args():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 2, 4, generator=g)
    return dict(x_adv=x.clone(), x_clean=x, grad=torch.randn(3, 2, 4, generator=g),
                eps=0.1, alpha=0.02)


@FUZZ
@given(arg=st.sampled_from(["x_adv", "x_clean", "grad"]),
       how=st.sampled_from(TENSOR_CORRUPTIONS), norm=st.sampled_from(["linf", "l2"]))
def test_pgd_step_tensor_arguments(arg, how, norm):
    args = _pgd_args()
    args[arg] = corrupt(args[arg], how)
    if how == "bool":
        args[arg] = args[arg].float() + 2.0 if arg != "grad" else args[arg]  # out of [0, 1]
    kinds = REFUSED
    name = arg
    if how in ("extra_dim", "other_size", "meta") and arg == "x_adv":
        name = "x_"  # the mismatch is reported against the other image tensor (x_clean)
    assert_refused(lambda: pgd_step(**args, norm=norm), name if how != "meta" else "", kinds)


@FUZZ
@given(arg=st.sampled_from(["eps", "alpha"]), value=st.sampled_from(BAD_SCALARS))
def test_pgd_step_budgets(arg, value):
    args = _pgd_args() | {arg: value}
    if isinstance(value, torch.Tensor):  # (2,) for a batch of 3
        pass
    assert_refused(lambda: pgd_step(**args), arg)


@FUZZ
@given(value=st.sampled_from([2.0, -0.5, math.nan]), arg=st.sampled_from(["x_adv", "x_clean"]))
def test_pgd_step_refuses_images_outside_the_unit_box(value, arg):
    args = _pgd_args()
    args[arg] = args[arg].clone()
    args[arg][1, 0, 2] = value
    assert_refused(lambda: pgd_step(**args), arg)


def test_pgd_step_norm_and_validate():
    assert_refused(lambda: pgd_step(**_pgd_args(), norm="l1"), "norm")
    assert_refused(lambda: pgd_step(**_pgd_args(), norm=2), "norm")
    assert_refused(lambda: pgd_step(**_pgd_args(), validate="no"), "validate")


# ---------------------------------------------------------------------- attention


def _qkv():
    g = torch.Generator().manual_seed(2)
    return {n: torch.randn(1, 2, 5, 8, generator=g) for n in ("q", "k", "v")}


@FUZZ
@given(arg=st.sampled_from(["q", "k", "v"]), how=st.sampled_from(TENSOR_CORRUPTIONS))
def test_attention_tensor_arguments(arg, how):
    args = _qkv()
    args[arg] = corrupt(args[arg], how)
    if how == "other_size" and arg == "q":  # another head dim: q, k, v must share it
        pass
    if how == "meta":
        # all three on meta is a shape-only call (documented); one alone is a device mix
        assert_refused(lambda: attention(**args), "device")
        return
    name = arg if how not in ("other_size",) else ("head dim" if True else arg)
    if how == "extra_dim" or how in ("nan", "inf", "int64", "complex", "bool", "list", "string",
                                     "none", "numpy"):
        name = arg
    assert_refused(lambda: attention(**args), name)


@FUZZ
@given(which=st.sampled_from(["scale", "attn_mask", "is_causal", "block_size"]),
       value=st.sampled_from(["0.1", math.nan, 1 + 0j, [1.0], 0, torch.ones(3, 3),
                              torch.full((5, 5), math.nan)]))
def test_attention_options(which, value):
    args = _qkv()
    zero = type(value) is int and value == 0
    if which == "scale" and zero:
        return  # scale 0 is a valid (uniform) attention
    if which == "attn_mask" and zero:
        value = torch.zeros(5, 5, dtype=torch.int64)
    if which == "is_causal" and zero:
        value = None
    assert_refused(lambda: attention(**args, **{which: value}), which)


def test_attention_on_meta_is_a_shape_only_call():
    q = torch.empty(1, 2, 5, 8, device="meta")
    assert attention(q, q, q).shape == (1, 2, 5, 8)


# ---------------------------------------------------------------------- sequence_nll


def _nll_args():
    g = torch.Generator().manual_seed(3)
    return dict(hidden=torch.randn(2, 4, 6, generator=g),
                lm_head_weight=torch.randn(7, 6, generator=g),
                labels=torch.randint(0, 7, (2, 4), generator=g))


@FUZZ
@given(arg=st.sampled_from(["hidden", "lm_head_weight", "labels"]),
       how=st.sampled_from(TENSOR_CORRUPTIONS))
def test_sequence_nll_tensor_arguments(arg, how):
    args = _nll_args()
    if arg == "labels" and how in ("nan", "inf", "int64"):
        return  # int64 labels can hold no NaN/Inf, and int64 is their dtype
    args[arg] = corrupt(args[arg], how)
    name = arg
    if how == "meta":
        name = "device"
    assert_refused(lambda: sequence_nll(args["hidden"], args["lm_head_weight"], args["labels"]),
                   name)


@FUZZ
@given(which=st.sampled_from(["bias", "chunk", "ignore_index", "shift", "validate"]),
       value=st.sampled_from(["1", 2.5, None, [1.0], torch.zeros(3), torch.full((7,), math.nan)]))
def test_sequence_nll_options(which, value):
    args = _nll_args()
    if value is None and which == "bias":
        return  # bias=None is the default
    assert_refused(lambda: sequence_nll(args["hidden"], args["lm_head_weight"], args["labels"],
                                        **{which: value}), which)


# ---------------------------------------------------------------------- dispatch


@pytest.mark.parametrize("call, name", [
    (lambda: resolve_backend("nope"), "op"),
    (lambda: resolve_backend("masked_sgd_step", "gpu", device=torch.device("cpu"),
                             dtype=torch.float32), "backend"),
    (lambda: select_backend("masked_sgd_step", torch.device("cpu"), "gpu"), "backend"),
])
def test_dispatch_refuses_unknown_names(call, name):
    assert_refused(call, name)


# ---------------------------------------------------------------------- optimizers


@FUZZ
@given(cls_kw=st.sampled_from([
    (MaskedSGD, "lr"), (MaskedSGD, "momentum"), (MaskedSGD, "dampening"),
    (MaskedSGD, "weight_decay"), (MaskedSGD, "l1"), (MaskedAdamW, "lr"), (MaskedAdamW, "eps"),
    (MaskedAdamW, "weight_decay"), (MaskedAdamW, "l1"), (MaskedAdamW, "betas"),
]), value=st.sampled_from(BAD_SCALARS))
def test_optimizer_hyperparameters(cls_kw, value):
    cls, key = cls_kw
    if key == "dampening" and same(value, -1.0):
        value = 1.5
    p = torch.nn.Parameter(torch.ones(3))
    assert_refused(lambda: cls([p], **{"lr": 0.1, key: value}), key)


@FUZZ
@given(cls=st.sampled_from([MaskedSGD, MaskedAdamW]),
       dtype=st.sampled_from([torch.complex64, torch.int32, torch.bool]),
       position=st.sampled_from([0, 1]))
def test_optimizer_refuses_non_floating_parameters(cls, dtype, position):
    params = [torch.ones(2), torch.ones(2)]
    params[position] = torch.ones(2, dtype=dtype)
    assert_refused(lambda: cls(params, lr=0.1), f"params[{position}]", TypeError)


@FUZZ
@given(cls=st.sampled_from([MaskedSGD, MaskedAdamW]),
       bad=st.sampled_from([math.nan, math.inf, -math.inf, 1e38]),
       momentum=st.sampled_from([0.0, 0.9]))
def test_optimizer_nonfinite_step_is_skipped_and_nothing_written(cls, bad, momentum):
    p = torch.nn.Parameter(torch.full((4,), 0.5))
    kw = dict(momentum=momentum) if cls is MaskedSGD else {}
    opt = cls([p], lr=10.0, **kw)
    p.grad = torch.full((4,), 0.1)
    p.grad[2] = bad
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt.step()
    assert torch.equal(p.detach(), torch.full((4,), 0.5))
    assert opt.param_groups[0]["nonfinite_skips"] == 1
    assert all(torch.isfinite(v).all() for v in opt.state[p].values() if torch.is_tensor(v))


# ---------------------------------------------------------------------- native calls


NATIVE = r"""
import torch
from trustfast.optim import MaskedSGD
from trustfast._ext import cpp_extension

p = torch.zeros(70000, dtype=torch.complex64, requires_grad=True)
try:
    MaskedSGD([p], lr=0.1).step()
except TypeError as exc:
    print("optimizer:", exc)
ext = cpp_extension()
if ext is None:
    print("no extension")
else:
    c = torch.zeros(70000, dtype=torch.complex64)
    for label, call in (
        ("all_finite", lambda: ext.all_finite([torch.zeros(70000), c])),
        ("sgd_finite", lambda: ext.masked_sgd_finite([c], [c], [], [], 0.1, 0.0, 0.0, False,
                                                     0.0, 0.0, False, True)),
        ("sgd_step", lambda: ext.masked_sgd_step([c], [c], [], [], 0.1, 0.0, 0.0, False,
                                                 0.0, 0.0, False)),
    ):
        try:
            call()
        except (TypeError, RuntimeError) as exc:
            print(label + ":", type(exc).__name__, str(exc).splitlines()[0])
print("alive")
"""


def test_native_calls_with_complex_tensors_raise_instead_of_aborting():
    """Issue 17 reproducer 1: a complex parameter made the C++ all_finite throw inside an
    OpenMP loop (SIGABRT). Run in a subprocess so a crash fails this test, not the run."""
    res = subprocess.run([sys.executable, "-c", NATIVE], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "OMP_NUM_THREADS": "2"})
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "alive" in res.stdout, out
    assert "optimizer: params[0] must be a" in res.stdout, out
    if "no extension" not in res.stdout:
        assert "all_finite: TypeError" in res.stdout and "tensors[1]" in res.stdout, out
        # AT_DISPATCH refuses the dtype before any parallel region (NotImplementedError)
        assert "sgd_finite: NotImplementedError" in res.stdout, out
        assert "sgd_step: NotImplementedError" in res.stdout, out
