"""Backend dispatch: automatic choice, forcing by argument or environment, clear errors."""

import pytest
import torch

from trustfast.ops import _dispatch, masked_sgd_step
from trustfast.ops._dispatch import BackendUnavailableError, select_backend


def _sgd(backend=None):
    p, g = [torch.ones(5)], [torch.ones(5)]
    return masked_sgd_step(p, g, None, None, lr=0.1, backend=backend), p[0]


def test_cpu_prefers_cpp_when_built_else_torch(monkeypatch):
    expected = "cpp" if _dispatch.cpp_available() else "torch"
    assert select_backend("masked_sgd_step", torch.device("cpu")) == expected
    monkeypatch.setattr(_dispatch, "cpp_extension", lambda: None)
    assert select_backend("masked_sgd_step", torch.device("cpu")) == "torch"
    used, p = _sgd()
    assert used == "torch"
    assert torch.equal(p, torch.full((5,), 0.9))


def test_forced_cpp_without_extension_raises_with_reason(monkeypatch):
    monkeypatch.setattr(_dispatch, "cpp_extension", lambda: None)
    with pytest.raises(BackendUnavailableError,
                       match="'cpp' unavailable: trustfast._C is not built"):
        _sgd(backend="cpp")


def test_env_var_forces_backend(monkeypatch):
    monkeypatch.setenv("TRUSTFAST_BACKEND", "torch")
    used, p = _sgd()
    assert used == "torch"
    assert torch.equal(p, torch.full((5,), 0.9))


def test_argument_overrides_env(monkeypatch):
    monkeypatch.setenv("TRUSTFAST_BACKEND", "cpp")
    used, _ = _sgd(backend="torch")
    assert used == "torch"


def test_bad_env_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("TRUSTFAST_BACKEND", "cuda")
    with pytest.raises(ValueError, match="TRUSTFAST_BACKEND must be one of"):
        _sgd()


def test_bad_backend_argument_is_named():
    with pytest.raises(ValueError, match="backend must be one of"):
        _sgd(backend="fast")


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailableError, match="Triton kernels run on CUDA tensors"):
        select_backend("masked_sgd_step", torch.device("cpu"), "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    if _dispatch.triton_available():
        assert select_backend("masked_sgd_step", torch.device("cpu"), "triton") == "triton"


def test_cpp_rejects_non_cpu_devices():
    with pytest.raises(BackendUnavailableError, match="C\\+\\+ kernels run on CPU tensors"):
        select_backend("masked_sgd_step", torch.device("meta"), "cpp")


def test_unimplemented_backend_for_registered_op():
    _dispatch.register_op("_test_only_op", ("torch",))
    try:
        with pytest.raises(BackendUnavailableError, match="not implemented"):
            select_backend("_test_only_op", torch.device("cpu"), "cpp")
        assert select_backend("_test_only_op", torch.device("cpu")) == "torch"
    finally:
        _dispatch.OPS.pop("_test_only_op")


def test_forced_triton_rejects_float64():
    p, g = [torch.ones(3, dtype=torch.float64)], [torch.ones(3, dtype=torch.float64)]
    if not _dispatch.triton_available():
        pytest.skip("triton not installed")
    with pytest.raises(BackendUnavailableError, match="does not support torch.float64"):
        masked_sgd_step(p, g, None, None, lr=0.5, backend="triton")
