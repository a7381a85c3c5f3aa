"""Triton kernels and their host launchers, installed as `trustfast.kernels`.

Kernel code only: no domain logic and no imports of `trustfast.<domain>`. Domains call
`trustfast.ops`, which validates inputs and dispatches here for CUDA tensors (or for CPU tensors
under TRITON_INTERPRET=1).

Imported as the top-level `kernels` (`python -m ...` from a source checkout puts its root on
sys.path), this folder would shadow Hugging Face's `kernels` package, which transformers imports
when that package is installed; the import is then handed to it.
"""

if __name__ == "kernels":
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _others = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _checkout]
    _spec = importlib.machinery.PathFinder.find_spec("kernels", _others)
    if _spec is None or _spec.loader is None:
        raise ModuleNotFoundError(
            "No module named 'kernels' (the checkout's kernels/ folder is trustfast.kernels)",
            name="kernels",
        )
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["kernels"] = _module  # the import statement returns what sys.modules holds
    try:
        _spec.loader.exec_module(_module)
    except BaseException:
        del sys.modules["kernels"]
        raise
