## The local demo and try-out (issue 4): tools/demo (`sfn-pacer-demo`). See README "Quick start" and "Local try-out".
# Extra arguments of `make demo`, e.g. DEMO_ARGS="--messages 5000 --rate 200 --max-concurrency 4 --bad-share 0.01";
# by default two deployments share the budget through a coordination table: DEMO_ARGS="--static-split" turns
# coordination off, DEMO_ARGS="--deployments 1" runs one; DEMO_ARGS=--help lists every option.
# Batch executions: DEMO_ARGS="--messages-per-execution 10 --rate 10 --messages 1000" (up to 10 messages per
# execution, claimed in the coordination table; the report shows messages/s against the budget's refill).
DEMO_ARGS ?=
# Extra arguments of `make watch`, e.g. WATCH_ARGS="--moto-port 5001".
WATCH_ARGS ?=
# The event `make invoke` sends.
EVENT ?= events/batch.json

.PHONY: demo watch invoke

## make demo: moto + two deployments (function under cargo lambda watch, local ESM, producer) sharing one budget, a live line, then a report.
demo: venv
	cargo build --workspace --bins
	$(CARGO_TARGET_DIR)/debug/sfn-pacer-demo run $(DEMO_ARGS)

## make watch: moto on 127.0.0.1:5000 with the resources events/*.json name, and the function under cargo lambda watch.
watch: venv
	cargo build --workspace --bins
	$(CARGO_TARGET_DIR)/debug/sfn-pacer-demo serve $(WATCH_ARGS)

## make invoke: send $(EVENT) to the function that `make watch` runs.
invoke:
	cargo lambda invoke starter --invoke-address 127.0.0.1 --invoke-port 9000 --data-file $(EVENT)
