"""Builds the optional C++ CPU kernels `trustfast._C` next to the pure-Python package.

The packages are found here (every package under trustfast/, plus kernels/ installed as
`trustfast.kernels` through pyproject's package-dir mapping); everything else (metadata,
dependencies) lives in pyproject.toml. Install with `pip install --no-build-isolation -e .` so
the extension compiles against the torch that is already installed. When no C++ compiler
works, or TRUSTFAST_NO_EXT=1, the install still succeeds without `_C` and every CPU op
dispatches to its torch reference.
"""

import os
import sys
import warnings

from setuptools import find_packages, setup

ext_modules = []
cmdclass = {}

if os.environ.get("TRUSTFAST_NO_EXT", "0") != "1":
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError as exc:  # torch missing from the build environment
        warnings.warn(
            f"trustfast: building without trustfast._C (torch not importable: {exc})",
            stacklevel=1,
        )
    else:
        # -O3 and OpenMP; no -march=native so the binary runs on any x86-64 (SSE2 baseline).
        ext_modules.append(
            CppExtension(
                "trustfast._C",
                sources=["csrc/module.cpp", "csrc/masked_update.cpp", "csrc/pgd_step.cpp"],
                extra_compile_args=["-O3", "-fopenmp", "-fno-math-errno"],
                extra_link_args=["-fopenmp"],
            )
        )

        class OptionalBuildExtension(BuildExtension):
            """Build `_C` if the toolchain allows; otherwise warn and install without it."""

            def run(self):
                # torch checks the compiler (ABI, version) before building anything, so a
                # missing compiler fails here rather than in build_extension.
                try:
                    super().run()
                except Exception as exc:  # compiler missing or failing: fall back to torch ops
                    sys.stderr.write(
                        f"\ntrustfast: WARNING: could not build trustfast._C ({exc}); "
                        "CPU ops will use the torch reference backend.\n\n"
                    )

        cmdclass["build_ext"] = OptionalBuildExtension.with_options(use_ninja=True)

packages = find_packages(include=["trustfast", "trustfast.*"]) + ["trustfast.kernels"]

setup(packages=packages, ext_modules=ext_modules, cmdclass=cmdclass)
