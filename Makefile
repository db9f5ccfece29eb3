# The two commands of the README: `make demo` and `make test`. Both start from a fresh clone.
.PHONY: demo test test-unit bench stack-up stack-down bootstrap clean

bootstrap:
	@bash deploy/local/bootstrap.sh

demo: bootstrap
	.venv/bin/recstream demo $(DEMO_ARGS)

# Unit tests (tests/unit/test_layers.py runs `lint-imports`: the layer contracts in pyproject.toml),
# then integration tests on the real stack (Kafka KRaft, Redis, Ray), which the
# session fixture starts on ports the OS reports free and stops afterwards. `bootstrap` takes about
# half a second when uv.lock and pyproject.toml are unchanged (it never recreates .venv).
test: bootstrap
	.venv/bin/python -m pytest -m "not bench" $(PYTEST_ARGS)

test-unit: bootstrap
	.venv/bin/python -m pytest tests/unit $(PYTEST_ARGS)

# Benchmarks write reports/{stream,scale,models,serving,replay}.{json,md}; run them on an otherwise idle machine.
bench: bootstrap
	.venv/bin/recstream bench stream
	.venv/bin/recstream bench stream --cluster
	.venv/bin/recstream bench models
	.venv/bin/recstream bench serving
	.venv/bin/recstream bench replay

stack-up: bootstrap
	.venv/bin/recstream stack up

stack-down:
	.venv/bin/recstream stack down

clean:
	rm -rf .venv .cache
