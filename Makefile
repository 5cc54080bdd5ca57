# minibox: set-up, demo and tests on a fresh Debian 12 machine, as root.
#
#   make demo   -- install what is missing, then run the main demo
#   make test   -- install what is missing, then run the whole test suite
#   make soak   -- the long soak: mixed runs, killed callers, one gc, leaks? (bench/soak.py)
#
# Everything is idempotent: apt packages are installed only when missing,
# the venv is created once, the C core is rebuilt when csrc/ changes.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# The venv's interpreter: of the python3.11+ every user may run (a pyenv under
# /root, mode 0700, is not: an unprivileged test user could not run it) that
# can make a venv and build the C core, the one that starts fastest, timed
# here (src/minibox/_entry.py fastest-python; a CLI start is mostly the
# interpreter's).  Set PYTHON=... to choose yourself.
BOOT_PYTHON := $(firstword $(wildcard /usr/bin/python3) $(shell command -v python3))
PYTHON ?= $(shell $(BOOT_PYTHON) src/minibox/_entry.py fastest-python || echo $(BOOT_PYTHON))
APT_PACKAGES := gcc libc6-dev libcap-dev libseccomp-dev busybox-static cpio \
	qemu-system-x86 qemu-system-common iproute2 nftables python3-venv python3-dev \
	podman conmon containerd
PEER_PACKAGES := crun runc bubblewrap
STAMP := $(VENV)/.installed

.PHONY: demo test setup apt peers lint bench soak clean

demo: setup
	$(VENV)/bin/minibox demo namespaces
	$(VENV)/bin/minibox demo compare


# On a terminal, pytest's dots; in a log (stdout not a terminal) one line per
# test as it finishes, with its count, and the slowest tests at the end --
# a CI log shows progress instead of staying silent until a line of dots fills.
test: setup
	@if [ -t 1 ]; then set -x; $(PY) -m pytest -q tests; \
	else set -x; PYTHONUNBUFFERED=1 $(PY) -m pytest -v -o console_output_style=count --durations=10 tests; fi

SOAK_ARGS ?= --runs 10000 --vm-runs 200 --kill-fraction 0.1 --concurrency 4
soak: setup
	$(PY) bench/soak.py $(SOAK_ARGS)

setup: apt $(STAMP)

apt:
	@missing=""; for p in $(APT_PACKAGES) $(PEER_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml setup.py csrc/spawn.c csrc/spawn.h csrc/rootfs.c csrc/rootfs.h csrc/build_native.py \
		csrc/oci/front.c src/minibox/_entry.py src/minibox/_bundle.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,compare,plot]'
	@# pip's console scripts start site.py (.pth files, sitecustomize): replace them
	@# by ones that start python -S with the same paths (src/minibox/_entry.py)
	$(PY) -m minibox._entry scripts $(VENV)/bin
	@# byte-compile now: with PYTHONDONTWRITEBYTECODE set, every CLI start
	@# would otherwise recompile minibox from source (about 15 ms)
	$(PY) -m compileall -q src/minibox > /dev/null
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy --strict src

bench: setup
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build src/*.egg-info src/minibox/_minibox_native*
