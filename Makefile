# make demo: convert the sample CNN and verify it.  make test: the whole test suite.
# make bench: convert, verify and bench the sample models and a CIFAR-size VGG-16 (docs/performance.md).
# Each creates .venv and installs the project into it first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/relu2snn convert sample_models/cnn/model.onnx --calib sample_models/cnn/calib.npy \
		-o sample_models/cnn/model.snn.h5 --force
	$(BIN)/relu2snn inspect sample_models/cnn/model.snn.h5
	$(BIN)/relu2snn verify sample_models/cnn/model.snn.h5 --onnx sample_models/cnn/model.onnx \
		--data sample_models/cnn/test.npy --labels sample_models/cnn/labels.npy

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis sample_models/*/model.snn.h5
