# Two commands a person needs: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config/thumbwatch.yaml

.PHONY: run test test-storage test-celery test-systemd stress bench bench-big clean redis-server

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/thumbwatch run --config $(CONFIG)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest --ignore=tests/celery --ignore=tests/test_storage.py

# Storage that goes away under a running daemon: real loop-mounted ext4 images, tmpfs and a dead
# FUSE mount (needs root; skips with a message otherwise, and fails instead when CI=true).
test-storage: $(VENV)/.installed-test
	$(BIN)/python -m pytest tests/test_storage.py

# The Celery backend against a real broker: starts its own redis-server (127.0.0.1, a free port).
test-celery: $(VENV)/.installed-test redis-server
	$(BIN)/python -m pytest tests/celery

# The Celery tests need Debian's redis-server binary (they start their own on 127.0.0.1 and a free
# port). Installed when missing and we are root with apt; a policy-rc.d that exits 101 keeps the
# package from starting its own service, and is removed after unless it was there before.
# Without it the tests skip with a message (THUMBWATCH_REQUIRE_REDIS=1 makes that a failure).
redis-server:
	@command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    ours=; [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; ours=1; }; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null 2>&1 \
	      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null; }; \
	    rc=$$?; [ -z "$$ours" ] || rm -f /usr/sbin/policy-rc.d; [ $$rc = 0 ] || echo "could not install redis-server: the Celery tests will skip"; \
	  else echo "redis-server is missing (apt-get install redis-server): the Celery tests will skip"; fi; }

# Boots Debian 12 with systemd as PID 1 (mmdebstrap + systemd-nspawn), installs thumbwatch there
# the README's way and checks it as a person would (tests/systemd). Needs root: installs mmdebstrap
# and systemd-container (pinned to the host's systemd, so apt leaves the host's systemd alone) when
# missing; skips with a message otherwise. The root file system is cached in .cache/systemd-rootfs.
ifneq ($(shell id -u),0)
test-systemd:
	@echo "test-systemd: skipped: needs root (it boots a container)"
else
test-systemd: $(VENV)/.installed-test redis-server
	@missing=; command -v mmdebstrap >/dev/null || missing=mmdebstrap; \
	command -v systemd-nspawn >/dev/null || missing="$$missing systemd-container"; \
	if [ -n "$$missing" ]; then \
	  if ! command -v apt-get >/dev/null; then echo "test-systemd: skipped: missing$$missing and no apt-get"; exit 0; fi; \
	  v=$$(dpkg-query -W -f='$${Version}' systemd 2>/dev/null); \
	  pkgs=$$(for p in $$missing; do if [ $$p = systemd-container ] && [ -n "$$v" ]; then echo "$$p=$$v"; else echo $$p; fi; done); \
	  echo "test-systemd: installing $$pkgs"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$pkgs >/dev/null; } \
	    || { echo "test-systemd: skipped: cannot install $$pkgs"; exit 0; }; \
	fi; \
	$(BIN)/python tests/systemd/machine.py .cache/systemd-rootfs && \
	THUMBWATCH_SYSTEMD=1 $(BIN)/python -m pytest -p no:cacheprovider -s tests/systemd
endif

stress: $(VENV)/.installed-test
	THUMBWATCH_STRESS=1 $(BIN)/python -m pytest -m stress -p no:cacheprovider tests/test_stress.py

# The benchmarks (README, Performance): each prints the machine, its figures and PASS/FAIL per target.
bench: $(VENV)/.installed-test redis-server
	$(BIN)/pip install --quiet -e '.[bench]' || echo "pyvips not installable: benchmark runs without it"
	$(BIN)/python -m bench
	$(BIN)/python -m bench.celery
	$(BIN)/python -m bench.formats
	$(BIN)/python -m bench.media
	$(BIN)/python -m bench.fair
	$(BIN)/python -m bench.hooks

# The big-library rows (issue 19): polling at 10,000 / 100,000 / 1,000,000 photos (the trees are
# built once under bench/cache/poll, ~2 min for 1M; the run takes ~10 min more), and a chown -R
# of 5,000 photos while running and while stopped (root).
bench-big: $(VENV)/.installed-test
	$(BIN)/python -m bench.poll --sizes 10000,100000,1000000 --inplace-up-to 100000
	$(BIN)/python -m bench.metadata --photos 5000 --rounds 3

clean:
	rm -rf $(VENV) build *.egg-info
