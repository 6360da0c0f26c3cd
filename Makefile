# zplug developer commands. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV ?= .venv
# Torch pins for this project's machines (wheels on local disk); override elsewhere, e.g.
#   make test TORCH_SPEC="torch torchvision"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PLUGINS := $(wildcard plugins/zplug-*)
PY := $(VENV)/bin/python
STAMP := $(VENV)/.zplug-installed

.PHONY: install test test-slow test-zoo lint demo tune-demo bench bench-startup bench-evaluate clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml $(wildcard plugins/*/pyproject.toml)
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[test]" $(foreach p,$(PLUGINS),-e $(p))
	$(PY) -m pip install --quiet --no-deps lxt==2.1  # test reference for transformers; see pyproject.toml
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

test-slow: $(STAMP)  # also the real-size model checks (minutes)
	ZPLUG_SLOW=1 $(PY) -m pytest -q -p no:cacheprovider

# Every classification model in torchvision.models conserves or warns (about 20 min); the table is
# docs/torchvision-zoo.md, written by benchmarks/zoo.py.
test-zoo: $(STAMP)
	ZPLUG_ZOO=1 $(PY) -m pytest -q -p no:cacheprovider plugins/zplug-torchvision/tests/test_zoo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

demo: $(STAMP)
	$(VENV)/bin/zplug explain --demo --preset epsilon_plus_flat --out results/demo --overwrite

# Tune epsilon_gamma_box per layer group on generated demo images; compare on held-out ones (about 20 min).
tune-demo: $(STAMP)
	$(PY) benchmarks/tune_demo.py

bench: $(STAMP)
	$(PY) benchmarks/bench.py

bench-startup: $(STAMP)
	$(PY) benchmarks/startup.py

# zplug.evaluate vs Quantus 0.6.0 on the same work; updates docs/benchmarks.md.
bench-evaluate: $(STAMP)
	$(PY) benchmarks/evaluate.py

clean:
	rm -rf $(VENV) results .pytest_cache
