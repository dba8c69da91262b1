# The two commands of the README: `make demo` and `make test`. Both install what they need first.
#
# Where things are installed: into the active virtual environment when one is active ($VIRTUAL_ENV set),
# else into ./.venv, which `make install` creates. `make PYTHON=/path/to/python ...` picks another
# interpreter (and installs into its environment).
ifeq ($(origin PYTHON), undefined)
  ifdef VIRTUAL_ENV
    PYTHON := python
  else
    PYTHON := .venv/bin/python
  endif
endif
PIP := $(PYTHON) -m pip
DEMO_DIR ?= outputs/digits

.PHONY: install demo demo-detection demo-segmentation test test-all lint package docs benchmark

# torch first, from the pinned build when none is installed (a plain `pip install torch` would pull
# another, multi-GB build); then the package with its test extras.
install:
	@if [ "$(PYTHON)" = ".venv/bin/python" ] && [ ! -x .venv/bin/python ]; then \
		echo "creating ./.venv (activate a virtual environment first to install there instead)"; \
		python3 -m venv .venv; fi
	@$(PYTHON) -c "import torch, torchvision" 2>/dev/null || $(PIP) install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PIP) install -q -e ".[dev]"

demo: install
	$(PYTHON) -m hf_dtokd.demos.digits --output_dir $(DEMO_DIR)

# the embedded detection default: generated shapes, an RT-DETR teacher and student; the teacher and the students'
# backbone are the committed ones of the README's table (trained again, they would be other weights)
demo-detection: install
	$(PYTHON) -m hf_dtokd.demos.shapes --output_dir outputs/shapes --models_dir benchmarks/results/detection_demo/models

# the embedded segmentation default: generated shapes with masks, a SegFormer teacher and student
demo-segmentation: install
	$(PYTHON) -m hf_dtokd.demos.segmentation --output_dir outputs/segmentation

lint:
	$(PYTHON) -m ruff check src tests examples benchmarks docs
	$(PYTHON) -m ruff format --check src tests examples benchmarks docs

# the fast tier, in parallel (one torch thread per worker); test-all adds the slow tier (what CI runs); each
# tier ends with its 15 slowest tests (where the suite's time goes)
PYTEST := OMP_NUM_THREADS=1 $(PYTHON) -m pytest -q -n 2 --durations=15
test: install lint
	$(PYTEST) -m "not slow" tests

test-all: test
	$(PYTEST) -m slow tests

# wheel + sdist, twine check, and the wheel in a brand-new environment (silent import, console scripts)
package: install
	PYTHON=$(PYTHON) bash .ci/check_package

# the docs site, built as CI builds it: a broken link or docstring fails
docs: install
	NO_MKDOCS_2_WARNING=1 $(PYTHON) -m mkdocs build --strict --site-dir site

benchmark: install
	$(PYTHON) benchmarks/step_cost.py
	$(PYTHON) benchmarks/compare_methods.py
	$(PYTHON) docs/update_readme.py
