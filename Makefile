# Every user-facing target depends on `setup`, so each one works as the first command on a new machine.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch and torchvision first, as a matched pair: on the project's machines these two releases lie on local disk.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
GOLDEN ?= ../shared/golden

.PHONY: setup test lint golden bench bench-latency sweep report toybench

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

test: setup
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check sttm baselines runners scripts tests

golden: setup
	$(PY) -m sttm.check_golden $(GOLDEN)/sttm

bench: setup
	$(PY) scripts/bench_reducers.py

# on a CUDA machine: every reducer at budgets 0.5/0.3/0.15 on 7B-size random-weight models (see runners/latency.py)
LATENCY ?= results/latency/local
bench-latency: setup
	$(PY) -m runners.latency --model llava_onevision_7b --frames 64 128 --output $(LATENCY)
	$(PY) -m runners.latency --model qwen2_vl_7b --frames 128 --output $(LATENCY)

BUDGET ?= 0.5
NPROC  ?= 1
# NPROC=N: lmms-eval's data parallelism, one model copy per process (torchrun; gloo on CPU, NCCL on GPUs)
LAUNCH := $(if $(filter 1,$(NPROC)),$(PY),$(PY) -m torch.distributed.run --standalone --nproc_per_node=$(NPROC))
# optional: MODEL=<configs/model name> BENCHMARK=<configs/benchmark name> REDUCERS=sttm,tome ARGS='<more overrides>'
SWEEP_ARGS = budget=$(BUDGET) $(if $(MODEL),model=$(MODEL)) $(if $(BENCHMARK),benchmark=$(BENCHMARK)) \
             $(if $(REDUCERS),'reducers=[$(REDUCERS)]') $(ARGS)
sweep: setup
	$(LAUNCH) -m runners.evaluate $(SWEEP_ARGS)

RESULTS ?= outputs
report: setup
	$(PY) -m runners.report $(RESULTS)

toybench: setup
	$(PY) -m runners.toybench data/toybench
