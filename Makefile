# make demo: convert the sample CNN, verify it and draw its spikes.  make test: the whole test suite.
# make bench: convert, verify and bench the sample models and CIFAR-size VGG-16s, random and trained (docs/performance.md).
# make fuzz: the long fuzzing campaign (FUZZ_EXAMPLES cases per fuzz test, default 2000).
# make large-data: peak memory of convert and verify on 5,000 and 50,000 memory-mapped samples.
# make sweep: export models with torch, tf2onnx and skl2onnx and convert them (docs/sweep.md); installs the
#   sweep extra first (SWEEP_PIP_ARGS: more pip arguments, e.g. a CPU torch wheel and 'torchvision<0.29' to match it).
# All create .venv and install the project into it first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench fuzz large-data sweep clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,brian2,nir,plot,dask]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/relu2snn convert sample_models/cnn/model.onnx --calib sample_models/cnn/calib.npy \
		-o sample_models/cnn/model.snn.h5 --force
	$(BIN)/relu2snn inspect sample_models/cnn/model.snn.h5
	$(BIN)/relu2snn verify sample_models/cnn/model.snn.h5 --onnx sample_models/cnn/model.onnx \
		--data sample_models/cnn/test.npy --labels sample_models/cnn/labels.npy
	$(BIN)/relu2snn plot sample_models/cnn/model.snn.h5 --data sample_models/cnn/test.npy --sample 0 \
		--neurons '#1:3' --neurons '#7:2' -o sample_models/cnn/raster.png --force
	@echo "the spike raster of test sample 0 is in sample_models/cnn/raster.png (docs/hardware.md)"

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

sweep: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[sweep]' $(SWEEP_PIP_ARGS)
	$(BIN)/python benchmarks/sweep.py --json build/sweep.json

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis sample_models/*/model.snn.h5 sample_models/*/raster.png
