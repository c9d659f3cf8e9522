## Template and deployment (issue 3): template.yaml, infra/, samconfig.toml. See README "Deploy".
SAM := $(VENV)/bin/sam
CFN_LINT := $(VENV)/bin/cfn-lint
# The template checks run offline: no credentials, no telemetry; the region only feeds pseudo-parameters.
SAM_OFFLINE := SAM_CLI_TELEMETRY=0 AWS_DEFAULT_REGION=$${AWS_DEFAULT_REGION:-us-east-1}
# Extra `sam build` arguments, e.g. `make sam-build SAM_BUILD_ARGS=--debug`.
SAM_BUILD_ARGS ?=
# `make deploy DEPLOY_ARGS=` deploys with the answers saved in samconfig.toml, without questions.
DEPLOY_ARGS ?= --guided

.PHONY: lint-template validate sam-build deploy

## make lint-template: cfn-lint with the serverless rules, then SAM's own validation (translator + lint).
lint-template: venv
	$(CFN_LINT) --append-rules cfn_lint_serverless.rules -- template.yaml
	$(SAM_OFFLINE) $(SAM) validate --template-file template.yaml
	$(SAM_OFFLINE) $(SAM) validate --lint --template-file template.yaml

## make validate: lint-template plus the template's invariant tests (tests/tests/template.rs).
validate: lint-template
	cargo test -p sfn-pacer-tests --test template

## make sam-build: the release bootstrap, cross-built by cargo lambda, in .aws-sam/build.
## Arm64 needs the Rust target: rustup target add aarch64-unknown-linux-gnu.
sam-build: venv
	SAM_CLI_TELEMETRY=0 SAM_CLI_BETA_RUST_CARGO_LAMBDA=1 $(SAM) build --beta-features --template-file template.yaml $(SAM_BUILD_ARGS)

## make deploy: build, then deploy with AWS credentials of your own (asks for the parameters).
deploy: sam-build
	$(SAM) deploy $(DEPLOY_ARGS)
