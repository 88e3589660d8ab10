# Two commands do all the set-up on a fresh machine:
#   make demo   run curate on the bundled fixtures (builds them first)
#   make test   lint + the test suite
# Each creates .venv if it is missing. PYTHON picks the interpreter used to create it.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= build/demo
# paths for the demo's curate.toml: sources and model relative to the workspace, tag.model to here
DEMO_SET = --set 'run.sources=["../fixtures/scrape"]' --set run.model=../fixtures/tiny-sd \
	--set tag.model=$(DEMO)/fixtures/tagger

.PHONY: demo test lint bench clean venv

venv: $(VENV)/.installed

# The stamp depends on pyproject.toml so that a changed dependency list reinstalls.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: venv
	rm -rf $(DEMO)
	$(BIN)/python -m fixtures.scrape $(DEMO)/fixtures
	$(BIN)/python -m fixtures.tiny_tagger $(DEMO)/fixtures/tagger
	$(BIN)/python -m fixtures.tiny_sd $(DEMO)/fixtures/tiny-sd
	$(BIN)/curate init $(DEMO)/workspace
	cp fixtures/demo.toml $(DEMO)/workspace/curate.toml
	$(BIN)/curate run $(DEMO)/workspace $(DEMO_SET)
	@echo "--- the same command again: nothing changed, so every stage but import and check is skipped"
	$(BIN)/curate run $(DEMO)/workspace $(DEMO_SET)
	$(BIN)/curate report $(DEMO)/workspace --out $(DEMO)/report
	$(BIN)/curate buckets $(DEMO)/workspace/dataset
	$(BIN)/curate train $(DEMO)/workspace/dataset --model $(DEMO)/fixtures/tiny-sd --out $(DEMO)/ia3 \
		--network ia3 --max-train-steps 10 --set resolution=128 --set min_bucket_reso=64 \
		--set max_bucket_reso=256 --set learning_rate=0.01
	$(BIN)/curate lora export $(DEMO)/ia3/last.safetensors --model $(DEMO)/fixtures/tiny-sd \
		--out $(DEMO)/ia3-as-lora.safetensors
	$(BIN)/curate status $(DEMO)/workspace
	@echo "--- where everything is:"
	@echo "  workspace (manifest, curate.toml): $(DEMO)/workspace"
	@echo "  Kohya dataset + dataset.toml:      $(DEMO)/workspace/dataset"
	@echo "  review report (open in a browser): $(DEMO)/report/index.html"
	@echo "  LoRA (kohya keys):                 $(DEMO)/workspace/lora/last.safetensors"
	@echo "  iA3 (LyCORIS keys), and as a LoRA: $(DEMO)/ia3/last.safetensors, $(DEMO)/ia3-as-lora.safetensors"

# ruff, then the import layers (pyproject.toml [tool.importlinter]; curate/architecture.md, "Layers"),
# checked on curate as installed: tagging/, buckets/ and trainer/ are curate.* only there (setup.py).
LAYERS := build/installed
lint: venv
	$(BIN)/ruff check .
	rm -rf $(LAYERS) && mkdir -p $(dir $(LAYERS))
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation --no-compile --target $(LAYERS) . \
		>$(LAYERS).log 2>&1 || { cat $(LAYERS).log; exit 1; }
	cd $(LAYERS) && PYTHONPATH=. $(CURDIR)/$(BIN)/lint-imports --config $(CURDIR)/pyproject.toml

test: lint
	@command -v chromium >/dev/null 2>&1 || if [ "$$(id -u)" = 0 ]; then \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } \
		|| echo "WARNING: could not install chromium: the report's browser test will skip"; \
	else echo "chromium not found: tests/test_report.py skips its browser test;" \
		"install it with: sudo apt-get install -y chromium"; fi
	$(BIN)/python -m pytest -q

bench: venv
	$(BIN)/python bench/import_bench.py
	$(BIN)/python bench/dedupe_bench.py

clean:
	rm -rf build $(VENV)
