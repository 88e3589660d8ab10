# Two commands do all the set-up on a fresh machine:
#   make demo   run curate on the bundled fixtures (builds them first)
#   make test   lint + the test suite
# Each creates .venv if it is missing. PYTHON picks the interpreter used to create it.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= build/demo

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
	$(BIN)/curate import $(DEMO)/fixtures/scrape --into $(DEMO)/workspace
	$(BIN)/curate dedupe $(DEMO)/workspace --report $(DEMO)/dedupe.html
	$(BIN)/curate filter $(DEMO)/workspace
	$(BIN)/curate tag $(DEMO)/workspace --model $(DEMO)/fixtures/tagger
	$(BIN)/curate tags filter $(DEMO)/workspace
	$(BIN)/curate captions trigger $(DEMO)/workspace sks --class-token woman
	$(BIN)/curate captions stats $(DEMO)/workspace --top 10
	$(BIN)/curate layout $(DEMO)/workspace --out $(DEMO)/dataset --target-steps 1000
	$(BIN)/curate buckets $(DEMO)/dataset --fix
	$(BIN)/curate check $(DEMO)/dataset
	$(BIN)/python -m fixtures.tiny_sd $(DEMO)/fixtures/tiny-sd
	$(BIN)/curate train $(DEMO)/dataset --model $(DEMO)/fixtures/tiny-sd --out $(DEMO)/lora \
		--max-train-steps 10 --set resolution=128 --set min_bucket_reso=64 --set max_bucket_reso=256
	$(BIN)/curate status $(DEMO)/workspace

lint: venv
	$(BIN)/ruff check .

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
