# Everything a fresh Debian 12 machine needs, installed on demand.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
APT_PKGS := fuse3 libfuse3-dev pkg-config attr iptables rsync gcc git s3fs
BENCH_APT_PKGS := s3fs rclone
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: all setup system-deps demo test soak bench clean

all: test

system-deps:
	@missing=""; for p in $(APT_PKGS) $(EXTRA_APT); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; fi

$(STAMP): pyproject.toml
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	# s3exchange declares Python >= 3.12 but runs on 3.11: the tests use it to write fixtures
	$(PY) -m pip install -q --ignore-requires-python 's3exchange==0.1.1'
	@touch $@

setup: system-deps $(STAMP)

demo: setup
	$(VENV)/bin/s3fuse demo

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

soak: setup
	$(PY) -m pytest -m soak $(PYTEST_ARGS)

bench:
	$(MAKE) setup EXTRA_APT="$(BENCH_APT_PKGS)"
	$(PY) benchmarks/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
