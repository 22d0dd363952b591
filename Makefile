# Every target creates .venv and installs what it needs by itself; pip runs again only when
# pyproject.toml changes (the stamp files are older than it).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARTIFACTS ?= artifacts
DATASET ?= mnist
ARCH ?= mlp
TRAIN_ARGS ?=
LAMBDA_PYTHON ?= 3.12
LAMBDA_PLATFORM ?= x86_64

.PHONY: help train test bench finetune-bench lint check package lock clean

help:
	@echo "make train    train, evaluate and export the model bundle to $(ARTIFACTS)/"
	@echo "              (DATASET=mnist|digits ARCH=mlp|cnn ARTIFACTS=dir TRAIN_ARGS='--no-augment ...';"
	@echo "              about 38 min on 2 cores, 36 of them for the number fields' field reader:"
	@echo "              TRAIN_ARGS='--field-reader-epochs 0' leaves it out)"
	@echo "make test     run the test suite"
	@echo "make bench    throughput on 30,000 MNIST PNGs; accuracy of the MLP and CNN on other hands"
	@echo "make finetune-bench  fine-tune on 400 other writers' images; accuracy before/after, times"
	@echo "              (SEEDS=42,43,44 FINETUNE_ARGS='--epochs 30 ...')"
	@echo "make lint     ruff"
	@echo "make check    lint, then the test suite (what CI runs)"
	@echo "make package  build/lambda.zip for AWS Lambda (LAMBDA_PYTHON=$(LAMBDA_PYTHON))"
	@echo "make lock     pin the Lambda's wheels with their hashes in infra/lambda-requirements.txt"
	@echo "              (after changing dependencies; make package installs only what it pins)"

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.train.stamp: pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install -q -e '.[train]' --config-settings editable_mode=compat
	touch $@

$(VENV)/.dev.stamp: pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install -q -e '.[train,aws,dev]' --config-settings editable_mode=compat
	touch $@ $(VENV)/.train.stamp

train: $(VENV)/.train.stamp
	$(BIN)/digits-train --dataset $(DATASET) --arch $(ARCH) --out $(ARTIFACTS) $(TRAIN_ARGS)

test: $(VENV)/.dev.stamp
	$(BIN)/python -m pytest

SEEDS ?= 42
FINETUNE_ARGS ?=
finetune-bench: $(VENV)/.dev.stamp
	@test -f $(ARTIFACTS)/manifest.json || $(MAKE) train ARTIFACTS=$(ARTIFACTS)
	$(BIN)/python tools/finetune_bench.py --model $(ARTIFACTS) --seeds $(SEEDS) \
		--train-args "$(FINETUNE_ARGS)"

lint: $(VENV)/.dev.stamp
	$(BIN)/ruff check .

check: lint test

bench: $(VENV)/.dev.stamp
	@test -f $(ARTIFACTS)/manifest.json || $(MAKE) train ARTIFACTS=$(ARTIFACTS)
	@test -f $(ARTIFACTS)-cnn/manifest.json || $(MAKE) train ARCH=cnn ARTIFACTS=$(ARTIFACTS)-cnn
	$(BIN)/python tools/bench.py --model $(ARTIFACTS) --cnn $(ARTIFACTS)-cnn

package: $(VENV)/.dev.stamp
	@test -f $(ARTIFACTS)/manifest.json || $(MAKE) train ARTIFACTS=$(ARTIFACTS)
	$(BIN)/python tools/package_lambda.py --python-version $(LAMBDA_PYTHON) \
		--platform $(LAMBDA_PLATFORM) --model $(ARTIFACTS) --out build/lambda.zip

lock: $(VENV)/.dev.stamp
	$(BIN)/python tools/package_lambda.py --write-lock --lock infra/lambda-requirements.txt

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache *.egg-info
