# The README's two commands are `make run` and `make test`; both install what they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV_BIN := .venv/bin
PYTEST_ARGS ?=
# `make test` runs its tiers side by side in this many workers, the longest (the cluster
# tier, first in collection order) first (see tests/conftest.py).
TEST_WORKERS ?= 4
# `make testenv NODE=real` adds the real node, which runs the images of `make images`.
NODE ?=

.PHONY: help install testbed images run test test-unit test-integration test-e2e test-cluster \
	lint format testenv testenv-down bench clean generate

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

install: ## System packages, uv and the locked Python environment in .venv
	@bash hack/bootstrap.sh

testbed: ## Build the test bed's binaries into the versioned cache (once)
	@bash hack/build-testbed.sh >/dev/null

images: install testbed ## Build the images the test bed's real node runs (podman, no registry)
	@bash hack/build-images.sh >/dev/null

run: install ## The local stack (tertulia up) and a terminal chat with it; /quit stops both
	@bash hack/run-local.sh

test: ## Every test: unit, integration (real servers), e2e (control plane), cluster (real node); ends with where the time went
	@TEST_WORKERS=$(TEST_WORKERS) bash hack/test.sh $(PYTEST_ARGS)

test-unit: install ## Only the fast, pure tests
	$(VENV_BIN)/pytest -m unit $(PYTEST_ARGS)

test-integration: install testbed ## Only the tests against real Redis, llama.cpp and Weaviate
	$(VENV_BIN)/pytest -m integration $(PYTEST_ARGS)

test-e2e: install testbed ## Only the tests against the real control plane
	$(VENV_BIN)/pytest -m e2e $(PYTEST_ARGS)

test-cluster: install testbed images ## Only the tests of the stack's own pods on the real node
	$(VENV_BIN)/pytest -m cluster $(PYTEST_ARGS)

generate: install ## Regenerate the CRD, docs/configuration.md, manifests/install.yaml and the render golden files
	$(VENV_BIN)/tertulia operator crd > charts/tertulia/crds/chatbots.tertulia.dev.yaml
	cp charts/tertulia/crds/chatbots.tertulia.dev.yaml manifests/crd.yaml
	$(VENV_BIN)/tertulia operator reference > docs/configuration.md
	bash hack/render-install.sh > manifests/install.yaml
	UPDATE_GOLDEN=1 $(VENV_BIN)/pytest -q -p no:randomly tests/unit/operator/test_render.py

lint: install ## ruff (lint and format check) and mypy
	$(VENV_BIN)/ruff check .
	$(VENV_BIN)/ruff format --check .
	$(VENV_BIN)/mypy

format: install ## Apply ruff's fixes and formatting
	$(VENV_BIN)/ruff check --fix .
	$(VENV_BIN)/ruff format .

testenv: install testbed ## Start the control plane by hand (NODE=real adds the real node); prints the KUBECONFIG line
	@bash hack/testenv.sh up $(NODE)

testenv-down: ## Stop the control plane started by `make testenv`
	@bash hack/testenv.sh down

bench: images ## Run the benchmarks in bench/ (BENCH=gateway for one, QUICK=1 for tiny sizes), then a summary
	@bash hack/bootstrap.sh
	$(VENV_BIN)/python -m bench $(if $(QUICK),--quick) $(BENCH)

clean: testenv-down ## Remove the environment and local caches (not the versioned test-bed cache)
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache
