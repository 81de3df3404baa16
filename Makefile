# `make run` and `make test` create .venv on first use, install the project into it, then do their job.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=

.PHONY: run test docs lint format bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev,sweep]"
	touch $(STAMP)

# the tests also read runs back through MLflow, export ONNX and build the site: extras that
# `make run` does not need
TEST_STAMP := $(VENV)/.installed-test-stamp
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev,sweep,mlflow,test]"
	touch $(TEST_STAMP)

run: $(STAMP)
	$(PY) -m densenet_exp $(ARGS)

# Two pytest workers, each test file on one worker (its module fixtures are made once), one
# compute thread per process: the suite is mostly interpreters starting and tiny models, and two
# workers each running torch's 2-thread pool would fight over the 2 cores (measured: slower than
# one worker). TEST_ARGS adds pytest options, e.g. TEST_ARGS="-n 0 -k sweep".
TEST_ARGS ?=
test: $(TEST_STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile $(TEST_ARGS) tests

# the documentation site on http://127.0.0.1:8000, rebuilt as its pages change
docs: $(TEST_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(PY) benchmarks/bench_train.py $(ARGS)

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache .ruff_cache
