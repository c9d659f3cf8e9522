# sfn-pacer — developer entry points. `make demo` and `make test` work on a fresh machine:
# they install what they need into ./.venv (moto, cargo-lambda, cfn-lint, aws-sam-cli).
SHELL := /bin/bash
VENV := $(CURDIR)/.venv
PYTHON ?= python3
export PATH := $(VENV)/bin:$(PATH)
# One target dir for every build (tests, cargo lambda watch, benches): the AWS SDK is built once.
export CARGO_TARGET_DIR ?= $(CURDIR)/target
export MOTO_SERVER ?= $(VENV)/bin/moto_server

.PHONY: venv test unit fmt clippy lint-template build invoke watch clean

venv: $(VENV)/.installed
$(VENV)/.installed: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements-dev.txt
	touch $@

## make test: every check CI runs — format, clippy, unit + integration tests (moto), template lint.
test: venv fmt clippy lint-template
	cargo test --workspace --all-targets

## make unit: the fast, network-free unit tests of the library only.
unit:
	cargo test -p starter --lib

fmt:
	cargo fmt --all -- --check

clippy:
	cargo clippy --workspace --all-targets -- -D warnings

## make build: the release `bootstrap` for Lambda (target/lambda/starter/bootstrap).
build: venv
	cargo lambda build --release --package starter

clean:
	cargo clean
	rm -rf $(VENV) .aws-sam

include mk/*.mk
