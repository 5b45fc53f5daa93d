# The two commands of the README: `make demo` and `make test`. Both set up .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/test
PORT ?= 8000

.PHONY: demo test test-postgres test-sqlite lint typecheck install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

DATA_DIR := $(or $(SLUICE_DATA_DIR),data)

demo: $(STAMP)
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py bootstrap_demo --token-file $(DATA_DIR)/demo-token
	$(BIN)/python manage.py deploy_dag examples/demo.yaml --org demo
	$(BIN)/python manage.py deploy_dag examples/demo_warehouse.yaml --org demo --postgres-only
	PORT=$(PORT) exec $(BIN)/python manage.py runplatform --with-generator

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy apps config sluice_worker

test: $(STAMP) lint typecheck test-postgres test-sqlite

test-postgres: $(STAMP)
	DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/pytest -p no:cacheprovider

test-sqlite: $(STAMP)
	env -u DATABASE_URL $(BIN)/pytest -p no:cacheprovider -m smoke

clean:
	rm -rf $(VENV) data
