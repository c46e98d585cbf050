# The two set-up commands are `make run` and `make test`; both build .venv when missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run web test test-fast lint fmt venv clean bench bench-quick bench-deps bench-redis deb system-deps

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,web]'
	touch $(STAMP)

# Foreground daemon on built-in defaults: state under ./coordination unless
# COORDINATION_DIR (or a config file) says otherwise.
run: $(STAMP)
	$(BIN)/coordd run

# The live dashboard on 127.0.0.1:9642, a client of the daemon `make run` started (same
# COORDINATION_DIR or config). `coordctl web-token` prints the tokens to sign in with.
web: $(STAMP)
	$(BIN)/coordd web

lint: $(STAMP)
	$(BIN)/ruff check coordd coordctl tests bench
	$(BIN)/mypy

test: $(STAMP) lint system-deps
	$(BIN)/python -m pytest -q

# The tests not marked slow (bench-quick, the .deb build, ...), without lint: for the
# edit-test loop. `make test` still runs everything.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

fmt: $(STAMP)
	$(BIN)/ruff check --fix coordd coordctl tests bench
	$(BIN)/ruff format coordd coordctl tests bench

# Benchmarks (see BENCHMARKS.md). The bench's own set-up: the `bench` extra (redis
# client, py-spy) and Debian's redis-server for the peer; when redis-server cannot be
# installed the peer is skipped with a note, never the whole run.
BENCH_STAMP := $(VENV)/.bench-installed

bench-deps: $(BENCH_STAMP) bench-redis

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]' || echo "bench: the bench extra could not be installed; the Redis peer will be skipped"
	touch $(BENCH_STAMP)

bench-redis:
	@command -v redis-server >/dev/null 2>&1 || command -v /usr/bin/redis-server >/dev/null 2>&1 \
	  || ( (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server) >/dev/null 2>&1 ) \
	  || echo "bench: redis-server could not be installed; the Redis peer will be skipped"

bench: bench-deps
	$(BIN)/python -m bench.run

bench-quick: bench-deps
	$(BIN)/python -m bench.run --quick

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache

# Debian tools the service tests use (tests/service): PostgreSQL 15 for the
# PostgreSQL store's tests (tests/postgres start a throwaway cluster), systemd-analyze,
# systemd-sysusers and systemd-tmpfiles (package systemd), dpkg-deb (dpkg) and the
# interpreter the .deb's venv is built for; strace for the fsync-order test
# (tests/daemon/test_fsync_order.py); chromium for the dashboard's browser tests
# (tests/web, driven by Playwright). Skipped when already present.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := $(SUDO) apt-get install -y --no-install-recommends
system-deps:
	@command -v systemd-analyze >/dev/null 2>&1 || { $(SUDO) apt-get update && $(APT_INSTALL) systemd; }
	@command -v dpkg-deb >/dev/null 2>&1 || { $(SUDO) apt-get update && $(APT_INSTALL) dpkg; }
	@test -x /usr/bin/python3.11 || { $(SUDO) apt-get update && $(APT_INSTALL) python3.11; }
	@command -v strace >/dev/null 2>&1 || { $(SUDO) apt-get update && $(APT_INSTALL) strace; }
	@command -v jq >/dev/null 2>&1 || { $(SUDO) apt-get update && $(APT_INSTALL) jq; }
	@test -x /usr/lib/postgresql/15/bin/initdb || { $(SUDO) apt-get update && $(APT_INSTALL) postgresql-15; }
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update && $(APT_INSTALL) chromium; }

# dist/coordd_<version>_<arch>.deb: coordd in its own venv under /opt/coordd, the
# systemd unit, sysusers/tmpfiles files, /etc/coordd/coordd.toml, completions.
deb: $(STAMP) system-deps
	packaging/build-deb.sh dist
