# berg: two commands on a fresh machine — `make demo` and `make test`.
# Plain pip on purpose: on these machines pip takes torch/torchvision from local disk;
# uv/poetry would download ~3 GB.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.14.1 torchvision==0.29.1
# The stamp records what was installed; the venv is rebuilt when pyproject.toml changes.
STAMP  := $(VENV)/.berg-installed-$(shell cat pyproject.toml Makefile | sha256sum | cut -c1-16)

.PHONY: venv demo test lint docs bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install --progress-bar on $(TORCH)
	$(BIN)/python -m pip install -e ".[test,docs,scale,clip-sam]"
	rm -f $(VENV)/.berg-installed-*
	touch $(STAMP)

demo: venv
	$(BIN)/python scripts/demo.py --out demo_output $(if $(IMAGES),--images "$(IMAGES)")

LINT_PATHS := berg tests scripts benchmarks creation_code

lint: venv
	$(BIN)/python -m ruff check $(LINT_PATHS)
	$(BIN)/python -m ruff format --check $(LINT_PATHS)

test: venv lint
	$(BIN)/python -m pytest -q

docs: venv
	$(BIN)/python scripts/gen_docs.py
	BERG_QUIET=1 $(BIN)/python -m mkdocs build --strict --site-dir site
	@echo "built site/: open site/index.html (published by CI: scripts/publish_docs.py)"

# every benchmark at full size, each in a fresh process, refused on a busy machine (load > 0.5 per core);
# figures -> benchmarks/results/*.jsonl, tables of benchmarks/RESULTS.md regenerated from them
bench: venv
	$(BIN)/python benchmarks/_harness.py run $(if $(ONLY),--only $(ONLY)) $(if $(ON_LOAD),--on-load $(ON_LOAD))

clean:
	rm -rf demo_output .pytest_cache
