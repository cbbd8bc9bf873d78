# Two entry points for a fresh machine: `make run` (install + the main job) and `make test`.
# Every install goes through constraints.txt, which pins torch to its CPU build.
VENV   ?= .venv
PY     := $(VENV)/bin/python
DATA   ?= imdb
PRESET ?= tiny
LIMIT  ?= 500
OUT    ?= runs/$(PRESET)

# The UI test drives Debian's Chromium through its chromedriver (installed once, as root or via sudo).
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install browser run test bench

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

run: install
	$(VENV)/bin/ulmfit run --data $(DATA) --preset $(PRESET) $(if $(LIMIT),--limit $(LIMIT)) --out $(OUT)

browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver; }

test: install browser
	$(PY) -m pytest -q
