# make demo: convert the sample CNN and verify it.  make test: the whole test suite.
# make bench: convert, verify and bench the sample models and CIFAR-size VGG-16s, random and trained (docs/performance.md).
# make fuzz: the long fuzzing campaign (FUZZ_EXAMPLES cases per fuzz test, default 2000).
# make large-data: peak memory of convert and verify on 5,000 and 50,000 memory-mapped samples.
# All create .venv and install the project into it first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench fuzz large-data clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,dask]'
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
	$(BIN)/python -m pip install --quiet -e '.[dev,dask,samples]'   # torch trains the benchmarks' VGG-16
	$(BIN)/python benchmarks/run.py

fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q -p no:cacheprovider --hypothesis-show-statistics \
		tests/test_fuzz.py

large-data: $(STAMP)
	$(BIN)/python benchmarks/large_data.py --model mlp
	$(BIN)/python benchmarks/large_data.py --model cnn

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis sample_models/*/model.snn.h5
