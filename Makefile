# Two entry points for a fresh machine: `make run` (install + the main job) and `make test`.
# Every install goes through constraints.txt, which pins torch's version. Which build pip takes
# (CPU or CUDA) is up to the index: TORCH_INDEX adds one, e.g.
#   make run TORCH_INDEX=https://download.pytorch.org/whl/cpu     # CPU build (about 200 MB)
#   make run TORCH_INDEX=https://download.pytorch.org/whl/cu128   # CUDA 12.8 build
# Without it pip takes what its configured index offers (PyPI: the CUDA build on Linux, GBs).
VENV   ?= .venv
VPY    := $(VENV)/bin/python
DATA   ?= imdb
TORCH_INDEX ?=
# `make run`: the whole corpus with the preset that fits this machine (gpu when torch sees
# CUDA, else cpu); PRESET=... LIMIT=N OUT=... choose otherwise. `make demo`: a 5-minute run.
PRESET ?=
LIMIT  ?=
OUT    ?=

# The UI test drives Debian's Chromium through its chromedriver (installed once, as root or via sudo).
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# GPU nodes without internet (README: GPU nodes). `make wheelhouse` (with internet) collects wheels
# for the node's Python version PY and platform PLATFORM (the newest manylinux tag its glibc
# runs); on the node, `make install-offline` installs from them into PYTHON, the interpreter
# that has the node's CUDA torch, after checking that the two fit.
PY         ?= $(shell python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
PLATFORM   ?= manylinux_2_28_x86_64
WHEELHOUSE ?= wheelhouse
PYTHON     ?= python3

.PHONY: install browser run demo test wheelhouse install-offline

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -c constraints.txt $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) -e '.[test]'
	touch $@

run: install
	@preset=$(or $(PRESET),$$($(VPY) -c 'import torch; print("gpu" if torch.cuda.is_available() else "cpu")')); \
	  set -x; $(VENV)/bin/ulmfit run --data $(DATA) --preset $$preset $(if $(LIMIT),--limit $(LIMIT)) \
	    --out $(or $(OUT),runs/$$preset)

demo: install
	$(VENV)/bin/ulmfit run --data $(DATA) --preset tiny --limit 500 --out runs/demo

browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver; }

test: install browser
	$(VPY) -m pytest -q

wheelhouse: install
	$(VPY) deployments/wheelhouse.py build --python $(PY) --platform $(PLATFORM) --out $(WHEELHOUSE)

install-offline:
	@$(PYTHON) deployments/wheelhouse.py check $(WHEELHOUSE)
	$(PYTHON) -m pip install --no-index --find-links $(WHEELHOUSE) ulmfit-pipeline
	@$(PYTHON) -c 'import numpy, torch; torch.from_numpy(numpy.zeros(1)); \
	  print(f"torch {torch.__version__} with NumPy {numpy.__version__}; CUDA available: {torch.cuda.is_available()}")'
