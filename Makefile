# Switchboard: `make run` serves the default config, `make test` runs every test.
# Both do their own set-up through `make setup` (idempotent).

PYTHON   ?= python3
EP       ?= cpu
VENV     := .venv
PY       := $(VENV)/bin/python
ORT_LIB  := runtime/libonnxruntime.so
TINY     := models/tiny
SMALL    := models/gpt2-small
CONFIG   ?= config/switchboard.toml
REQS     := $(if $(filter cuda,$(EP)),scripts/requirements-gpu.txt,scripts/requirements.txt)
CARGO_FLAGS ?= --release --locked

.PHONY: setup build run test test-observability bench bench-model check-config clean fmt

## setup: install ONNX Runtime (from PyPI) into .venv, link its library into runtime/, generate the tiny model
setup: $(VENV)/.installed-$(EP) $(ORT_LIB) $(TINY)/model.onnx $(TINY)-4k/model.onnx

$(VENV)/.installed-$(EP): $(REQS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r $(REQS)
	rm -f $(VENV)/.installed-*
	touch $@

$(ORT_LIB): $(VENV)/.installed-$(EP) scripts/link_ort.py
	$(PY) scripts/link_ort.py runtime

$(TINY)/model.onnx: $(VENV)/.installed-$(EP) scripts/gen_model.py
	$(PY) scripts/gen_model.py --out $(TINY) --size tiny --force

# The tiny model with a 4096-token context, for tests of very long answers.
$(TINY)-4k/model.onnx: $(VENV)/.installed-$(EP) scripts/gen_model.py
	$(PY) scripts/gen_model.py --out $(TINY)-4k --size tiny --ctx 4096 --force

build:
	cargo build $(CARGO_FLAGS)

## run: build and start the daemon on the default config
run: setup build
	./target/release/switchboard run --config $(CONFIG)

check-config: build
	./target/release/switchboard check-config --config $(CONFIG)

## test: the whole suite (unit + integration, real ONNX Runtime on the tiny model)
test: setup
	cargo test $(CARGO_FLAGS) --workspace

## test-observability: Prometheus scrapes a live daemon; every dashboard and alert query must return data
test-observability: setup build
	bash scripts/test_observability.sh

## bench: inference pool vs. one-at-a-time vs. raw ONNX Runtime, on the GPT-2-small-shaped model
bench: setup bench-model
	cargo build $(CARGO_FLAGS) -p switchboard --bin switchboard -p switchboard-bench --bin switchboard-bench
	./target/release/switchboard-bench --model $(SMALL) --raw-ort "$(PY) scripts/bench_raw_ort.py"

bench-model: $(VENV)/.installed-$(EP)
	$(PY) scripts/gen_model.py --out $(SMALL) --size gpt2-small

fmt:
	cargo fmt --all

clean:
	rm -rf runtime models .venv
	cargo clean
