# The README's two commands are `make demo` and `make test`; each installs .venv on first use.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION := 1
# jsii names Node 20 end-of-life; it still runs the CDK here (Node 20 is what the README promises).
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test lint synth image clean

# .venv is rebuilt when the project's dependency list changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[worker,lambdas,cdk,dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m wanbatch.local.demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n 2 --dist loadfile

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

node_modules/.installed: package.json
	npm install --no-audit --no-fund --silent
	touch $@

synth: $(STAMP) node_modules/.installed
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" npx cdk synth --quiet

# The original build-and-push.sh: build batch_image/ and push it to IMAGE_REPO (an ECR repository URI).
image:
	@test -n "$(IMAGE_REPO)" || { echo "set IMAGE_REPO=<account>.dkr.ecr.<region>.amazonaws.com/<repo>"; exit 2; }
	aws ecr get-login-password | docker login --username AWS --password-stdin $${IMAGE_REPO%%/*}
	docker build -f batch_image/Dockerfile -t $(IMAGE_REPO):$(or $(TAG),$(shell git rev-parse --short HEAD)) .
	docker push $(IMAGE_REPO):$(or $(TAG),$(shell git rev-parse --short HEAD))

clean:
	rm -rf $(VENV) node_modules cdk.out outputs .pytest_cache
