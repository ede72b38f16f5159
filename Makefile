# Convenience targets; the README's two commands are the supported entry points.
.PHONY: run test demo bench

run:
	./scripts/run

test:
	./scripts/test

demo:
	./scripts/install-system-deps test
	./scripts/install-python-env test
	.venv/bin/python demo/demo.py

# make bench BENCH_ARGS=--quick for a short run (see bench/run.py --help).
bench:
	./scripts/install-system-deps test
	./scripts/install-python-env test
	.venv/bin/python bench/run.py $(BENCH_ARGS)
