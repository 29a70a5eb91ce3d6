# Two commands do everything on a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup run test lint bench golden trace-example fuzz clean

# (Re)install when pyproject.toml changes; the project is installed editable.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,dask,dev]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/vgpu-sim run scenarios/bdw.yaml

# pytest exits 5 when it collects nothing: that is a broken suite, not a pass.
test: $(STAMP)
	@MPLBACKEND=Agg $(PY) -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

lint: $(STAMP)
	$(VENV)/bin/ruff check sim tests notebooks
	$(VENV)/bin/ruff format --check sim tests

# The fuzz test's long mode: 50 times the examples `make test` runs, with hypothesis's
# random search instead of its fixed seed (tests/test_fuzz.py).
fuzz: $(STAMP)
	VGPU_SIM_FUZZ=long MPLBACKEND=Agg $(PY) -m pytest -q tests/test_fuzz.py

# Regenerate the golden summary after a deliberate model change; review the diff.
golden: $(STAMP)
	VGPU_SIM_UPDATE_GOLDEN=1 $(PY) -m pytest -q tests/test_run.py -k golden
	git diff --stat tests/golden

# Write the example capture with the model from its scenario, and fit it again (README
# "Fitting a scenario"); review the diff. Needed after any change to the model's timing.
trace-example: $(STAMP)
	rm -rf results/trace/hsw-guest
	tmp=$$(mktemp -d) && \
	  $(VENV)/bin/vgpu-sim run scenarios/captures/hsw-guest.yaml --xentrace --no-progress \
	    --out $$tmp/run > /dev/null && \
	  cp $$tmp/run/xentrace.bin scenarios/captures/hsw-guest.bin && rm -rf $$tmp
	$(VENV)/bin/vgpu-sim trace fit scenarios/captures/hsw-guest.bin --domain 1 --cpu-hz 2.8G \
	  --platform hsw --no-progress --out results/trace/hsw-guest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build *.egg-info
