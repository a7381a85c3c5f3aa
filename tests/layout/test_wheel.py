"""A non-editable install carries every subpackage: build a wheel from a copy of the tree,
install it into an empty folder, and import every package of the source tree from there (a
subpackage missing from the build would vanish from the wheel). The C++ extension is not
built here (TRUSTFAST_NO_EXT=1): this tests packaging, `make test`'s install builds `_C`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SKIP = shutil.ignore_patterns(".git", ".venv", "runs", "build", "dist", "*.egg-info",
                              "__pycache__", ".torch_extensions", "*.so", ".pytest_cache",
                              ".hypothesis", ".benchmarks", ".ruff_cache", "tests")


def _source_packages() -> set[str]:
    found = {"trustfast.kernels"}
    for init in (ROOT / "trustfast").rglob("__init__.py"):
        found.add(".".join(init.parent.relative_to(ROOT).parts))
    return found


@pytest.mark.slow
def test_wheel_installs_and_imports_every_subpackage(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=SKIP)
    env = dict(os.environ, TRUSTFAST_NO_EXT="1", PIP_NO_INDEX="1")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps",
                            "--no-build-isolation", "-q", "-w", str(tmp_path / "dist")],
                           capture_output=True, text=True, env=env, timeout=600)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-4000:]
    (wheel,) = (tmp_path / "dist").glob("trustfast-*.whl")
    with zipfile.ZipFile(wheel) as z:
        in_wheel = {".".join(Path(n).parent.parts) for n in z.namelist()
                    if n.endswith("__init__.py")}
    packages = _source_packages()
    assert packages <= in_wheel, f"missing from the wheel: {sorted(packages - in_wheel)}"
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q",
                              "--target", str(target), str(wheel)], capture_output=True,
                             text=True, env=env, timeout=600)
    assert install.returncode == 0, install.stderr[-4000:]
    script = (
        "import importlib, sys\n"
        "import trustfast\n"
        f"assert trustfast.__file__.startswith({str(target)!r}), trustfast.__file__\n"
        f"for name in {sorted(packages)!r}:\n"
        "    importlib.import_module(name)\n"
        "from trustfast.experiments import REGISTRY\n"
        "print(len(REGISTRY))\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300,
                         env=dict(env, PYTHONPATH=str(target), TRITON_INTERPRET="1"))
    assert run.returncode == 0, run.stderr[-4000:]
    assert int(run.stdout.split()[-1]) >= 8  # every experiment registered from the wheel
