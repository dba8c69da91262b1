# The two commands of the README: `make demo` and `make test`. Both install what they need first.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
DEMO_DIR ?= outputs/digits

.PHONY: install demo demo-detection test lint benchmark

# torch first, from the pinned build when none is installed (a plain `pip install torch` would pull
# another, multi-GB build); then the package with its test extras.
install:
	@$(PYTHON) -c "import torch, torchvision" 2>/dev/null || $(PIP) install "torch==2.14.1" "torchvision==0.29.1"
	$(PIP) install -q -e ".[dev]"

demo: install
	$(PYTHON) -m hf_dtokd.demo --output_dir $(DEMO_DIR)

# the embedded detection default: generated shapes, an RT-DETR teacher and student
demo-detection: install
	$(PYTHON) -m hf_dtokd.detection_demo --output_dir outputs/shapes

lint:
	$(PYTHON) -m ruff check src tests examples benchmarks docs
	$(PYTHON) -m ruff format --check src tests examples benchmarks docs

test: install lint
	$(PYTHON) -m pytest -q tests

benchmark: install
	$(PYTHON) benchmarks/step_cost.py
	$(PYTHON) benchmarks/compare_methods.py
	$(PYTHON) docs/update_readme.py
