# Two commands on a fresh machine with Python 3.10+: `make demo`, `make test`.
# They create .venv, install torch (keeping an existing CUDA torch of $(PYTHON)), build the
# package with its C++ extension against that torch, then run.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CI installs the CPU build 2.13.0 (it lies on disk there); override for another torch.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.trustfast-installed
# DeepSpeed's JIT-built ops and torch extensions are cached here between runs.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.torch_extensions

.PHONY: install demo test bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h)
	@if [ ! -x $(BIN)/python ]; then \
	  if $(PYTHON) -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then \
	    echo "make: keeping the CUDA torch of $(PYTHON) (venv with system site-packages)"; \
	    $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else \
	    $(PYTHON) -m venv $(VENV); \
	  fi; \
	fi
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel numpy
	@$(BIN)/python -c "import torch" 2>/dev/null \
	  || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q --no-build-isolation -e ".[dev]"
	@# torchattacks (a test and benchmark peer) declares torchvision, which would replace the
	@# installed torch with another build; its code never imports torchvision, so no deps.
	$(BIN)/python -m pip install -q --no-deps "torchattacks==3.5.1"
	@$(BIN)/python -c "import torch, trustfast._ext as e; print('make: trustfast._C', 'built' if e.cpp_extension() else 'NOT built: ' + str(e.cpp_extension_error()))"
	touch $@

demo: $(STAMP)
	$(BIN)/trustfast demo --out runs/demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python -m pytest benchmarks -q --benchmark-json=benchmarks/results/cpu_bench.json
	$(BIN)/python benchmarks/report.py benchmarks/results/cpu_bench.json

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf build *.egg-info trustfast/_C*.so runs .pytest_cache .benchmarks
