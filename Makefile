# Two commands for a new machine: `make run` (the product on embedded defaults) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install rasa browser docs screenshots bench bench-nlu bench-faq bench-flows bench-growth bench-nurture bench-api bench-groupchats bench-push soak nlu-train nlu-test lint clean

run: install rasa  ## create the virtualenvs, migrate, start the bot with the sandbox
	$(BIN)/scrm serve

test: install rasa browser  ## the whole test suite, the layer contract included (PostgreSQL and Redis on 127.0.0.1 are used)
	$(BIN)/python -m pytest -q

screenshots: install browser  ## the quick start's tour walked in Chromium, its pictures written to docs/images/
	DOCS_TOUR_IMAGES=docs/images $(BIN)/python -m pytest -q tests/bot/test_demo_tour.py

docs: install  ## the documentation site (docs/, mkdocs.yml) into var/site; strict: a broken link fails
	$(BIN)/python -m mkdocs build --strict

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed for the app"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip 2> >(grep -v "^WARNING: Location" >&2) || true
	$(BIN)/python -m pip install --quiet --pre -e '.[test]' 2> >(grep -v "^WARNING: Location" >&2)
	touch $(STAMP)

rasa:  ## the Rasa virtualenv (Python 3.10), created once and kept while nlu/requirements-rasa.txt is unchanged
	bash scripts/setup_rasa.sh

browser:  ## headless Chromium and a CJK font for the sandbox page tests and the tour's screenshots (Debian's packages)
	@bash scripts/install_chromium.sh

bench: install  ## ingest benchmark: callbacks/s and ack latency against a bare aiohttp handler, on PostgreSQL
	$(BIN)/python bench/ingest.py --role web

bench-nlu: install rasa  ## NLU client vs raw Rasa: throughput, latency, fallback when Rasa stops
	$(BIN)/python bench/nlu.py

bench-faq: install rasa  ## FAQ answering: held-out accuracy, off-topic answers, training and swap time, parse latency with and without it; 500 entries
	$(BIN)/python bench/faq.py

bench-flows: install rasa  ## conversations end to end (callback -> reply) with Rasa NLU on PostgreSQL, against a plain Rasa assistant
	$(BIN)/python bench/flows.py

bench-growth: install  ## group-buys and reward triggers under 1,000-10,000 concurrent transactions, referral tree of 100k, on PostgreSQL
	$(BIN)/python bench/growth.py

bench-nurture: install  ## 100,000 sequence steps due at once among 1,000,000 enrolments, 2 schedulers, one SIGKILLed, on PostgreSQL
	$(BIN)/python bench/nurture.py

bench-api: install  ## POST /orders rate and p99, a segment query and every report over 1,000,000 customers, on PostgreSQL
	$(BIN)/python bench/api.py

bench-groupchats: install  ## full sync of 10,000 customer groups x 200 members from the fake WeCom within its rate limit, and a group push's dispatch, on PostgreSQL
	$(BIN)/python bench/groupchats.py

bench-push: install  ## reply latency p95 of 50 chatting kf customers, without a push and while a push of 100,000 drains, on PostgreSQL
	$(BIN)/python bench/push.py

soak: install rasa  ## 10 minutes of kf and OA customers while PostgreSQL, Redis, Rasa, a worker and the API fail; every loss counted
	$(BIN)/python bench/soak.py

nlu-train: install rasa  ## train the intent model if its data or config changed
	$(BIN)/scrm nlu train

nlu-test: install rasa  ## held-out accuracy, then 5-fold cross-validation (about 12 min)
	$(BIN)/scrm nlu test --fail-under 0.9

lint: install  ## the layer contract, ruff and mypy
	$(BIN)/python -m pip install --quiet -e '.[lint]' 2> >(grep -v "^WARNING: Location" >&2)
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m ruff check .
	$(BIN)/python -m mypy core bot crm_store flows nlu admin_cli --ignore-missing-imports

clean:
	rm -rf $(VENV) .venv-rasa var nlu/models
