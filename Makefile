# The README's two commands: `make bench` (the main job) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fewstep-installed
RAY_STAMP := $(VENV)/.fewstep-ray-installed

.PHONY: bench test docs install lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU torch first, pinned: an unpinned torch may pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	# k-diffusion (a test peer) and torch-fidelity (Inception FID) pull torchvision, which
	# does not load beside this CPU torch; only what their used modules need is installed.
	$(BIN)/python -m pip install -q --no-deps k-diffusion==0.1.1.post1 torchsde==0.2.6 trampoline==0.1.2 \
		torch-fidelity==0.4.0
	touch $(STAMP)

# Ray (the optional `fewstep bench --ray` extra) only for the tests: `make bench` stays lean.
$(RAY_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[ray]'
	touch $(RAY_STAMP)

install: $(STAMP)

bench: $(STAMP)
	$(BIN)/fewstep bench --suite quick

test: $(RAY_STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -n 2 -m "not slow"

docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) fewstep-results
