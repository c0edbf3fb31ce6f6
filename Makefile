# Two entry points: `make demo` (set up, then compile, train, export and run a model) and `make test`.
# torch==2.13.0 is installed first: the machines here carry a local CPU build of it, and with it
# in place the project's `torch>=2.2` range installs nothing more (no CUDA wheels).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN := runs/demo

.PHONY: setup demo test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/cnnc check specs/xo.cnn
	$(BIN)/cnnc summary specs/xo.cnn
	$(BIN)/cnnc compile specs/xo.cnn -o $(RUN)-untrained.onnx
	rm -rf $(RUN)
	$(BIN)/cnnc train specs/xo.cnn --out $(RUN)
	$(BIN)/cnnc export $(RUN) -o $(RUN)/xo.onnx
	$(BIN)/cnnc eval $(RUN)/xo.onnx --dataset xo
	$(BIN)/python examples/xo_images.py $(RUN)/images
	$(BIN)/cnnc predict $(RUN)/xo.onnx $(RUN)/images/*.png --top-k 2

test: setup lint
	$(BIN)/python -m pytest -q

# mypy needs the installed layout (cnnc.dsl is dsl/, ...): a tree of links under build/ gives it that.
TYPECHECK := build/typecheck
lint: setup
	$(BIN)/ruff check .
	$(BIN)/cnnc fmt --check specs
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/cnnc
	for stage in dsl compiler datasets training export runtime tools; do ln -s ../../../$$stage $(TYPECHECK)/cnnc/$$stage; done
	for file in cnnc/*.py; do ln -s ../../../$$file $(TYPECHECK)/cnnc/; done
	cd $(TYPECHECK) && ../../$(BIN)/mypy --config-file ../../pyproject.toml -p cnnc

clean:
	rm -rf $(VENV) runs build *.egg-info
