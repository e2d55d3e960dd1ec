# flowalign: `make demo` trains the shapes testbed model, `make test` runs the tests.
# Both create ./.venv and install the project into it on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv demo test test-slow lint bench mutation clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/flowalign demo

# pytest exits 5 when it collected no test: that is a broken setup, never a pass.
test: venv
	@$(PY) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: the test setup is broken"; exit 1; fi; exit $$rc

test-slow: venv
	@$(PY) -m pytest -q -m slow; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no slow tests"; exit 1; fi; exit $$rc

lint: venv
	$(VENV)/bin/ruff check .

bench: venv
	$(PY) -m benchmarks.speed.rollout

# mutation testing of the core (docs/testing.md): hours on 2 CPU cores for every group, not part of `make test`.
# GROUPS="samplers geneval_rules" runs only those groups.
mutation: venv
	$(PY) -m pip install -q -e '.[mutation]'
	$(PY) -m benchmarks.mutation $(foreach g,$(GROUPS),--group $(g)) --save benchmarks/results/mutation.json

clean:
	rm -rf $(VENV) build *.egg-info
