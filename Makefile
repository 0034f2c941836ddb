# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the suite).
# Both create the virtual environment .venv first when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
NNUNET_VENV := .venv-nnunet
# The engine as 3D Slicer 5.10 runs it: its bundled numpy, SciPy, SimpleITK... pinned.
SLICER_PINS := Testing/environments/slicer-5.10.txt
SLICER_VENV := .venv-slicer-5.10
# What numpy's version can change: reading and writing images, the query metrics and strategies,
# MRML nodes filled from arrays (scene, window/level, cursor) and the loop both front ends share;
# about 30 s (the whole suite runs once, under `make test`).
SLICER_PIN_TESTS := Testing/io Testing/metrics Testing/query/test_strategies.py \
	Testing/slicer_module/test_slicer_scene.py Testing/slicer_module/test_window_level.py \
	Testing/slicer_module/test_cursor.py Testing/slicer_module/test_loop_session.py

.PHONY: setup demo test lint test-slicer-pins

$(BIN)/assft: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU wheel first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	# web: trame-slicer and the one slicer-core everything runs on (pyproject.toml says why 5.11);
	# browser: Playwright for the browser tests (they drive the system's Chromium).
	$(BIN)/pip install -q -e ".[test,swin,lint,web,browser,dicom]"
	# nnU-Net models (--model nnunet:PATH): the engine builds their networks with nnU-Net's own code,
	# which needs these three only. --no-deps keeps nnU-Net's planning, plotting and table packages
	# (scipy, scikit-image, pandas, ...) out: MONAI imports every optional package it finds, and with
	# them each engine process started about 2 s later (users get all of it: pip install assft[nnunet]).
	$(BIN)/pip install -q --no-deps nnunetv2==2.8.1 dynamic-network-architectures==0.4.4 \
		batchgenerators==0.25.5
	# The tests' nnU-Net model is planned, trained and checked by nnU-Net itself, in a venv of its own.
	$(PYTHON) -m venv $(NNUNET_VENV)
	$(NNUNET_VENV)/bin/pip install -q torch==2.13.0
	# torch pinned again: timm (through dynamic-network-architectures) asks for torchvision, and an
	# unpinned one pulls torch 2.14 with CUDA (6.4 GB here, enough to fill a CI machine's disk); the
	# pinned one is 1.9 GB, and nnU-Net's U-Nets never import timm or torchvision.
	$(NNUNET_VENV)/bin/pip install -q nnunetv2==2.8.1 torch==2.13.0
	# ... and built once here (about 30 s; .cache/nnunet-test-model), not in every test run.
	$(BIN)/python Testing/assft_testing/nnunet.py
	# deepbet's pretrained TorchScript nets (weights only; its GUI dependencies are not needed).
	$(BIN)/pip install -q --no-deps deepbet==1.0.2
	# The MNI152 template of the sample data ships in nilearn's wheel (data files only are read).
	# Users get it with the `demo` extra (pip install "assft[demo]", same pin); here --no-deps keeps
	# nilearn's own dependencies (scipy, scikit-learn, pandas, ...) out of the venv.
	$(BIN)/pip install -q --no-deps nilearn==0.14.1
	touch $(BIN)/assft

setup: $(BIN)/assft

demo: setup
	$(BIN)/assft demo --out demo-out --quick

test: setup
	# ASSFT_SELFTEST=1: the whole module loop (create, rank, label, fine-tune, roll back) runs too.
	# -n 2: two workers of one thread each (Testing/conftest.py), one test file a worker; most tests
	# wait on subprocesses and imports, so on 2 cores the suite takes about 10 minutes instead of 17.
	# --durations: the slowest tests, so that the suite's 15 minutes on 2 cores can be kept.
	ASSFT_SELFTEST=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=20

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

$(SLICER_VENV)/bin/assft: pyproject.toml $(SLICER_PINS)
	$(PYTHON) -m venv $(SLICER_VENV)
	$(SLICER_VENV)/bin/pip install -q --upgrade pip
	$(SLICER_VENV)/bin/pip install -q torch==2.13.0 -c $(SLICER_PINS)
	# Everything Slicer bundles at its version (pip refuses an engine dependency that needs another).
	$(SLICER_VENV)/bin/pip install -q -c $(SLICER_PINS) -r $(SLICER_PINS) -e ".[test,web]"
	touch $@

# The engine and slicer-core tests under Slicer 5.10's package pins (CI runs it after `make test`).
test-slicer-pins: $(SLICER_VENV)/bin/assft
	$(SLICER_VENV)/bin/python Testing/environments/check_pins.py $(SLICER_PINS)
	$(SLICER_VENV)/bin/python -m pytest -q -n 2 --dist loadfile $(SLICER_PIN_TESTS)
