"""A source checkout on sys.path: its kernels/ folder (installed as `trustfast.kernels`) must not
take the place of Hugging Face's top-level `kernels` package, which transformers imports when it
is installed (a `python -m trustfast ...` run from the checkout once failed in DeepSpeed's
launcher with "cannot import name 'CUDAProperties' from 'kernels'")."""

import importlib.metadata
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE = "import kernels, trustfast.kernels as k; print(kernels.__file__); print(k.__file__)"


def _hub_kernels_installed() -> bool:
    try:
        importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def test_top_level_kernels_from_the_checkout_root_is_not_ours():
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    if _hub_kernels_installed():
        assert proc.returncode == 0, proc.stderr
        hub, ours = (Path(line).resolve() for line in proc.stdout.split())
        assert hub != ROOT / "kernels" / "__init__.py"
        assert hub != ours
    else:
        assert proc.returncode != 0
        assert "No module named 'kernels'" in proc.stderr
        assert "trustfast.kernels" in proc.stderr
