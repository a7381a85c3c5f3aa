"""One dispatch mechanism for every op: each backend's constraints, a forced backend that cannot
take a call raises BackendUnavailableError (naming the op, the backend and the failed constraint)
through the `backend=` argument and through TRUSTFAST_BACKEND alike, and auto mode picks the
documented backend."""

import pytest
import torch

from trustfast.ops import (
    OPS,
    BackendUnavailableError,
    _dispatch,
    attention,
    masked_adamw_step,
    masked_sgd_step,
    pgd_step,
    resolve_backend,
    select_backend,
    sequence_nll,
)


def _sgd(dtype=torch.float32, device="cpu"):
    def call(**kw):
        p = [torch.ones(5, dtype=dtype, device=device)]
        g = [torch.ones(5, dtype=dtype, device=device)]
        return masked_sgd_step(p, g, None, None, lr=0.1, **kw)
    return call


def _adamw(dtype=torch.float32, device="cpu"):
    def call(**kw):
        p, g, m, v = ([torch.ones(5, dtype=dtype, device=device)] for _ in range(4))
        return masked_adamw_step(p, g, m, v, None, step=1, lr=0.1, **kw)
    return call


def _pgd(dtype=torch.float32, device="cpu"):
    def call(**kw):
        x = torch.full((2, 3), 0.5, dtype=dtype, device=device)
        return pgd_step(x, x, torch.ones_like(x), eps=0.1, alpha=0.01, **kw)
    return call


def _attention(dtype=torch.float32, mask=False, n_k=5):
    def call(**kw):
        gen = torch.Generator().manual_seed(0)
        q = torch.randn(1, 2, 5, 8, generator=gen, dtype=dtype)
        k = torch.randn(1, 2, n_k, 8, generator=gen, dtype=dtype)
        m = torch.ones(1, 1, 5, n_k, dtype=torch.bool) if mask else None
        return attention(q, k, k, attn_mask=m, **kw)
    return call


def _nll(dtype=torch.float32, bias=False):
    def call(**kw):
        gen = torch.Generator().manual_seed(0)
        h = torch.randn(2, 4, 8, generator=gen, dtype=dtype)
        w = torch.randn(11, 8, generator=gen, dtype=dtype)
        b = torch.zeros(11, dtype=dtype) if bias else None
        return sequence_nll(h, w, torch.randint(0, 11, (2, 4), generator=gen), bias=b, **kw)
    return call


NO_INTERPRETER = {"TRITON_INTERPRET": "0"}  # CPU tensors are then a wrong device for Triton
NO_TRITON = "no triton"  # simulate a machine without the triton package
NO_CPP = "no cpp"  # simulate a build without trustfast._C

# (op, backend, call, environment to simulate, failed constraint, words of the reason)
CASES = [
    ("masked_sgd_step", "triton", _sgd(torch.float64), None, "dtype", "not support torch.float64"),
    ("masked_sgd_step", "triton", _sgd(), NO_INTERPRETER, "device", "Triton kernels run on"),
    ("masked_sgd_step", "triton", _sgd(), NO_TRITON, "triton installed", "not installed"),
    ("masked_sgd_step", "cpp", _sgd(), NO_CPP, "built", "trustfast._C is not built"),
    ("masked_sgd_step", "cpp", _sgd(device="meta"), None, "device", "C++ kernels run on CPU"),
    ("masked_adamw_step", "triton", _adamw(torch.float64), None, "dtype", "torch.float64"),
    ("masked_adamw_step", "triton", _adamw(), NO_INTERPRETER, "device", "run on CUDA tensors"),
    ("masked_adamw_step", "triton", _adamw(), NO_TRITON, "triton installed", "not installed"),
    ("masked_adamw_step", "cpp", _adamw(), NO_CPP, "built", "trustfast._C is not built"),
    ("masked_adamw_step", "cpp", _adamw(device="meta"), None, "device", "got a meta tensor"),
    ("pgd_step", "triton", _pgd(torch.float64), None, "dtype", "not support torch.float64"),
    ("pgd_step", "triton", _pgd(), NO_INTERPRETER, "device", "Triton kernels run on CUDA"),
    ("pgd_step", "triton", _pgd(), NO_TRITON, "triton installed", "not installed"),
    ("pgd_step", "cpp", _pgd(), NO_CPP, "built", "trustfast._C is not built"),
    ("pgd_step", "cpp", _pgd(device="meta"), None, "device", "C++ kernels run on CPU"),
    ("attention", "triton", _attention(mask=True), None, "no attn_mask", "no attn_mask"),
    ("attention", "triton", _attention(torch.float64), None, "dtype", "torch.float64"),
    ("attention", "triton", _attention(n_k=0), None, "keys", "at least one key"),
    ("attention", "triton", _attention(), NO_INTERPRETER, "device", "run on CUDA tensors"),
    ("attention", "triton", _attention(), NO_TRITON, "triton installed", "not installed"),
    ("attention", "cpp", _attention(), None, "implemented", "'cpp' is not implemented"),
    ("sequence_nll", "triton", _nll(bias=True), None, "no bias", "takes no bias"),
    ("sequence_nll", "triton", _nll(torch.float64), None, "dtype", "torch.float64"),
    ("sequence_nll", "triton", _nll(), NO_INTERPRETER, "device", "run on CUDA tensors"),
    ("sequence_nll", "triton", _nll(), NO_TRITON, "triton installed", "not installed"),
    ("sequence_nll", "cpp", _nll(), None, "implemented", "'cpp' is not implemented"),
]


def _simulate(monkeypatch, env):
    if env == NO_TRITON:
        monkeypatch.setattr(_dispatch, "triton_available", lambda: False)
    elif env == NO_CPP:
        monkeypatch.setattr(_dispatch, "cpp_extension", lambda: None)
    elif env:
        for key, value in env.items():
            monkeypatch.setenv(key, value)


def _ids():
    return [f"{op}-{backend}-{constraint}" for op, backend, _, _, constraint, _ in CASES]


def test_every_op_and_backend_has_a_refusal_case():
    covered = {(op, backend) for op, backend, *_ in CASES}
    for op in OPS:
        if op.startswith("_"):
            continue
        for backend in ("triton", "cpp"):
            assert (op, backend) in covered, (op, backend)


@pytest.mark.parametrize("how", ["argument", "environment"])
@pytest.mark.parametrize(("op", "backend", "call", "env", "constraint", "reason"), CASES,
                         ids=_ids())
def test_forced_backend_that_cannot_take_the_call_raises(monkeypatch, how, op, backend, call,
                                                         env, constraint, reason):
    _simulate(monkeypatch, env)
    kwargs = {"backend": backend}
    if how == "environment":
        monkeypatch.setenv("TRUSTFAST_BACKEND", backend)
        kwargs = {}
    with pytest.raises(BackendUnavailableError) as info:
        call(**kwargs)
    err = info.value
    assert (err.op, err.backend, err.constraint) == (op, backend, constraint)
    assert reason in err.reason
    message = str(err)
    assert message.startswith(f"{op}: backend {backend!r}") and reason in message


def test_no_silent_fallback_triton_with_a_mask_from_the_environment(monkeypatch):
    """The bug this mechanism fixes: TRUSTFAST_BACKEND=triton with a mask ran the torch path."""
    monkeypatch.setenv("TRUSTFAST_BACKEND", "triton")
    with pytest.raises(BackendUnavailableError, match="attention: backend 'triton'.*attn_mask"):
        _attention(mask=True)()


def test_head_dim_the_triton_kernel_lacks():
    """head dims past 256 are refused by validation first; the constraint itself says why."""
    with pytest.raises(BackendUnavailableError, match="head dim 1..256, got 300") as info:
        resolve_backend("attention", "triton", device="cuda", dtype=torch.float16,
                        has_mask=False, head_dim=300, n_keys=7)
    assert info.value.constraint == "head dim"
    assert resolve_backend("attention", device="cuda", dtype=torch.float16, has_mask=False,
                           head_dim=300, n_keys=7) == "torch"


# ---- auto mode -----------------------------------------------------------------------------


@pytest.mark.parametrize("built", [True, False])
def test_auto_on_the_cpu_prefers_cpp_when_built(monkeypatch, built):
    if built and not _dispatch.cpp_available():
        pytest.skip("trustfast._C not built")
    if not built:
        monkeypatch.setattr(_dispatch, "cpp_extension", lambda: None)
    expected = "cpp" if built else "torch"
    for dtype in (torch.float32, torch.float64, torch.float16):
        assert _sgd(dtype)() == expected
        assert _adamw(dtype)() == expected
        assert resolve_backend("pgd_step", device="cpu", dtype=dtype) == expected
    # no C++ kernels for these: attention takes PyTorch's fused CPU flash kernel ("sdpa"),
    # sequence_nll the torch path, also under TRITON_INTERPRET=1
    assert select_backend("attention", "cpu") == "sdpa"
    assert select_backend("sequence_nll", "cpu") == "torch"
    assert select_backend("masked_sgd_step", "cpu") == expected


@pytest.mark.skipif(not _dispatch.triton_available(), reason="triton not installed")
def test_auto_on_cuda_takes_triton_where_its_constraints_pass():
    """Decided from the facts alone (no CUDA tensor needed): Triton, else the torch reference."""
    cuda = dict(device=torch.device("cuda"))
    for op in ("masked_sgd_step", "masked_adamw_step", "pgd_step"):
        assert resolve_backend(op, **cuda, dtype=torch.bfloat16) == "triton"
        assert resolve_backend(op, **cuda, dtype=torch.float64) == "torch"
    attn = dict(cuda, dtype=torch.float16, has_mask=False, head_dim=40, n_queries=9, n_keys=77)
    assert resolve_backend("attention", **attn) == "triton"
    assert resolve_backend("attention", **{**attn, "has_mask": True}) == "torch"
    assert resolve_backend("attention", **{**attn, "dtype": torch.float64}) == "torch"
    assert resolve_backend("attention", **{**attn, "n_keys": 0}) == "torch"
    assert resolve_backend("attention", **{**attn, "n_keys": 0, "n_queries": 0}) == "triton"
    nll = dict(cuda, dtype=torch.float32, has_bias=False)
    assert resolve_backend("sequence_nll", **nll) == "triton"
    assert resolve_backend("sequence_nll", **{**nll, "has_bias": True}) == "torch"
    assert resolve_backend("sequence_nll", **{**nll, "dtype": torch.float64}) == "torch"


def test_auto_falls_back_where_the_forced_backend_raises():
    """The same call: forced it raises, in auto mode it runs the reference and returns."""
    call = _attention(mask=True)
    with pytest.raises(BackendUnavailableError):
        call(backend="triton")
    torch.testing.assert_close(call(), call(backend="torch"))
    assert torch.equal(call(), call(backend="sdpa"))
    assert _sgd(torch.float64)(backend="torch") == "torch"


def test_a_device_only_question_skips_the_other_facts():
    assert select_backend("pgd_step", "cpu", "triton") == "triton"  # TRITON_INTERPRET=1
    with pytest.raises(BackendUnavailableError):
        resolve_backend("pgd_step", "triton", device="cpu", dtype=torch.float64)


# ---- the registry --------------------------------------------------------------------------


def test_every_op_is_registered_and_info_lists_sequence_nll():
    from trustfast.info import backend_table, info_text

    assert {"attention", "masked_sgd_step", "masked_adamw_step", "pgd_step",
            "sequence_nll"} <= set(OPS)
    assert backend_table()["sequence_nll"]["cpu"] == "torch"
    lines = [ln.split() for ln in info_text().splitlines()]
    assert ["sequence_nll", "torch"] in lines
    assert any(ln and ln[0] == "sequence_nll[triton]:" for ln in lines)


def test_register_op_checks_its_declaration():
    with pytest.raises(ValueError, match="unknown backends"):
        _dispatch.register_op("_bad", ("torch", "cuda"))
    with pytest.raises(ValueError, match="torch reference"):
        _dispatch.register_op("_bad", ("triton",))
    with pytest.raises(ValueError, match="does not implement"):
        _dispatch.register_op("_bad", ("torch",), constraints={"cpp": ()})
    assert "_bad" not in OPS
    with pytest.raises(ValueError, match="unknown op"):
        select_backend("_never_registered", "cpu")


@pytest.mark.skipif(not _dispatch.triton_available(), reason="triton not installed")
def test_an_ops_own_constraint_runs_after_the_platforms(monkeypatch):
    only_even = _dispatch.Constraint("even", lambda f: None if f["n"] % 2 == 0 else "odd n",
                                     ("n",))
    _dispatch.register_op("_test_even", ("torch", "triton"), constraints={"triton": (only_even,)})
    try:  # TRITON_INTERPRET=1: the CPU passes Triton's device check
        assert resolve_backend("_test_even", "triton", device="cpu", n=2) == "triton"
        assert resolve_backend("_test_even", device="cuda", n=2) == "triton"
        assert resolve_backend("_test_even", device="cuda", n=3) == "torch"
        assert resolve_backend("_test_even", device="cuda") == "triton"  # n not stated
        with pytest.raises(BackendUnavailableError, match=r"odd n \[constraint 'even'\]"):
            resolve_backend("_test_even", "triton", device="cpu", n=3)
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(BackendUnavailableError) as info:  # the platform's check comes first
            resolve_backend("_test_even", "triton", device="cpu", n=3)
        assert info.value.constraint == "device"
    finally:
        OPS.pop("_test_even")
