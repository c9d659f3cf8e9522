## Benchmarks (issue 6): the drain at the quota's limit against baselines, pacing accuracy,
## handler cost, bootstrap size/init/RSS. See BENCHMARKS.md.
## `make bench` takes about 10 minutes (every run is bounded) and writes docs/bench/:
## results.md, results.json, drain.svg (and drain.png when a TrueType font is available).
BENCH_OUT ?= docs/bench
BENCH_ARGS ?=
# The PNG chart draws its text with this font (read at run time); without it, SVG only.
BENCH_FONT ?= /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
BENCH_FEATURES := $(if $(wildcard $(BENCH_FONT)),--features png,)

.PHONY: bench

## make bench: builds the release bootstrap (measured as is), then runs the benchmarks in release.
bench:
	cargo build --release -p starter
	BENCH_FONT=$(BENCH_FONT) cargo run --release -p sfn-pacer-bench $(BENCH_FEATURES) -- --out $(BENCH_OUT) $(BENCH_ARGS)
