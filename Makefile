# The README's quick start: `make demo` (set up + run the offline default) and `make test` (set up + tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

# torch first, pinned: torch==2.13.0 is the CPU build on this platform; any other spec pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[test,plot,gguf]"
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/peftrun

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check peftrun tests scripts

# The whole-process benchmark (peftrun vs peft + Trainer as subprocesses); BENCH_ARGS="--configs b-lora,a-lora ..."
BENCH_ARGS ?= --configs a-lora,b-lora --steps 20 --batch 8 --lr 2e-3 --eval 32 --repeats 2
bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/bench_e2e.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) outputs multirun
