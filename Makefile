# Every user-facing target depends on `setup`, so each one works as the first command on a new machine.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch and torchvision first, as a matched pair: on the project's machines these two releases lie on local disk.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
GOLDEN ?= ../shared/golden

.PHONY: setup test lint golden bench bench-latency sweep report toybench train-toy regress

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

# on a CUDA machine: every reducer at budgets 0.5/0.3/0.15 on 7B/8B-size random-weight models (see runners/latency.py);
# writes $(LATENCY).json, $(LATENCY).md and $(LATENCY)_<model>.png
LATENCY ?= outputs/latency
bench-latency: setup
	$(PY) -m runners.latency --model llava_onevision_7b --frames 64 128 --output $(LATENCY)
	$(PY) -m runners.latency --model qwen2_vl_7b --frames 128 --output $(LATENCY)
	$(PY) -m runners.latency --model qwen3_vl_8b --frames 64 128 --output $(LATENCY)

# The tiny model of the offline suite (configs/model/tiny_llava_onevision.yaml), trained on the synthetic benchmarks'
# train split in the eleven runs its training.json records. `make train-toy` replays them, oldest first, each from
# the one before, each into its own folder under outputs/ (the last, outputs/decoy5, is the committed model; models/
# is not written): about 2 hours on an H200 (DEVICE=cuda, as recorded); DEVICE=cpu runs too, but takes weeks.
# `$(PY) -m runners.toylab.replay $(TOY_MODEL)/training.json` prints the commands without running them.
TOY_MODEL := models/tiny_llava_onevision

BUDGET ?= 0.5
NPROC  ?= 1
# NPROC=N: lmms-eval's data parallelism, one model copy per process (torchrun; gloo on CPU, NCCL on GPUs)
LAUNCH := $(if $(filter 1,$(NPROC)),$(PY),$(PY) -m torch.distributed.run --standalone --nproc_per_node=$(NPROC))
# optional: MODEL=<configs/model name> BENCHMARK=<configs/benchmark name> REDUCERS=sttm,tome ARGS='<more overrides>'
SWEEP_ARGS = budget=$(BUDGET) $(if $(MODEL),model=$(MODEL)) $(if $(BENCHMARK),benchmark=$(BENCHMARK)) \
             $(if $(REDUCERS),'reducers=[$(REDUCERS)]') $(ARGS)
sweep: setup $(if $(MODEL),,$(TOY_MODEL)/model.safetensors)
	$(LAUNCH) -m runners.evaluate $(SWEEP_ARGS)

DEVICE ?= cuda
train-toy: setup
	$(PY) -m runners.toylab.replay $(TOY_MODEL)/training.json --device $(DEVICE) --run

$(TOY_MODEL)/model.safetensors:
	@echo "$(TOY_MODEL) is missing: it is committed (git checkout -- $(TOY_MODEL)); 'make train-toy' replays its training" >&2; exit 1

# A fixed subset through the real harness, compared with the committed baseline: a drop beyond the baseline's
# tolerance fails with the table. After an intended change, rewrite the baseline with
# `$(PY) -m runners.regress $(REGRESS_RESULTS) $(REGRESS_BASELINE) --write` once this target has run.
REGRESS_RESULTS  ?= outputs/regress
REGRESS_BASELINE := results/baselines/toy.json
REGRESS_ARGS     := budget=0.15 'reducers=[sttm,random]' limit=40 'benchmark.tasks=[toy_vnbench,toy_nextqa,toy_videomme]'
regress: setup $(TOY_MODEL)/model.safetensors
	rm -rf $(REGRESS_RESULTS)
	$(PY) -m runners.evaluate $(REGRESS_ARGS) results_dir=$(REGRESS_RESULTS) hydra.run.dir=$(REGRESS_RESULTS)/hydra
	$(PY) -m runners.regress $(REGRESS_RESULTS) $(REGRESS_BASELINE)

RESULTS ?= outputs
report: setup
	$(PY) -m runners.report $(RESULTS)

toybench: setup
	$(PY) -m runners.toybench data/toybench
