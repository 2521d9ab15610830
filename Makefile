# Two commands on a fresh machine: `make demo` (main job) and `make test` (test suite). Both are idempotent.
# TORCH_SPEC picks the torch build; the default is the CPU wheel. GPU users: make TORCH_SPEC='torch' demo
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: venv demo test bench browser clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -q -e ".[dev,ray]"
	# pretrainedmodels' own Inception-ResNet-v2 file is the cross-check of our FPNInception backbone; its setup.py
	# requires torchvision, which has no CPU build, and the test loads that one file only
	$(PY) -m pip install -q --no-deps pretrainedmodels==0.7.4
	touch $(TEST_STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m robustir.cli run experiments/demo.yaml

# The HTML report test drives a real headless Chromium; install it where we can (root + apt), else it skips.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
		|| echo "note: could not install chromium; the browser test will skip"; \
	else echo "note: chromium/chromedriver not installed; the browser test will skip"; fi

test: $(TEST_STAMP) browser
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile tests

bench: $(TEST_STAMP)
	$(PY) benchmarks/attacks.py
	$(PY) benchmarks/runner.py

clean:
	rm -rf $(VENV) runs .pytest_cache
