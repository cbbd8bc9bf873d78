# Two entry points for a fresh machine: `make run` (install + the main job) and `make test`.
# Every install goes through constraints.txt, which pins torch to its CPU build.
VENV   ?= .venv
VPY    := $(VENV)/bin/python
DATA   ?= imdb
PRESET ?= tiny
LIMIT  ?= 500
OUT    ?= runs/$(PRESET)

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

.PHONY: install browser run test wheelhouse install-offline

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

run: install
	$(VENV)/bin/ulmfit run --data $(DATA) --preset $(PRESET) $(if $(LIMIT),--limit $(LIMIT)) --out $(OUT)

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
