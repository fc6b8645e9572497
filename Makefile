# Everything installs from constraints.txt so the app, the tests and CI run the same versions.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install sysdeps test app lint bench-embed clean-state

$(VENV)/.installed: pyproject.toml constraints.txt
	python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e '.[test,scale,api]'
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

app: install
	$(VENV)/bin/streamlit run app_streamlit.py

lint: install
	$(VENV)/bin/ruff check .

bench-embed: install
	$(PY) scripts/bench_embed.py

clean-state:
	rm -rf runs
