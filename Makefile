# Two commands for an operator: `make run` and `make test`. Everything else is a step of those.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
VAR := $(CURDIR)/var
export SOFTHSM2_CONF := $(VAR)/softhsm2.conf

SYSTEM_TOOLS := softhsm2-util openssl certutil gnutls-cli go redis-server

.PHONY: run test lint bench bench-tools fuzz fuzz-tools soak system venv softhsm proto check-proto clean

# The demo's HTTP port (`make run PORT=8080`); the leaf certificates' OCSP URL names it, so another
# port re-issues them.
PORT ?= 2560

run: venv softhsm
	$(BIN)/ocspctl demo setup --dir $(VAR)/demo --http-port $(PORT)
	$(BIN)/ocspctl demo serve --dir $(VAR)/demo --http-port $(PORT)

test: venv softhsm lint
	$(BIN)/python -m pytest -q tests

# ruff with the settings in pyproject.toml (the version is pinned in requirements.lock).
lint: venv
	$(BIN)/ruff check .

# Benchmarks print a table of ratios against a reference measured in the same run.
# bench/signing_bench.py (issue 10) takes about six minutes and writes bench/RESULTS.md and
# bench/results.png; `make bench BENCH_ARGS=--quick` for short runs.
BENCH_ARGS ?=
bench: venv softhsm bench-tools
	$(BIN)/ocspctl demo setup --dir $(VAR)/demo
	$(BIN)/python bench/signing_bench.py --demo $(VAR)/demo $(BENCH_ARGS)
	$(BIN)/python bench/http_bench.py --demo $(VAR)/demo
	$(BIN)/python bench/signer_bench.py --demo $(VAR)/demo
	$(BIN)/python bench/audit_bench.py
	$(BIN)/python bench/get_path_bench.py
	$(BIN)/python bench/decode_bench.py
	$(BIN)/python bench/status_check_bench.py
	$(BIN)/python bench/local_callers_bench.py --demo $(VAR)/demo --seconds 2
	$(BIN)/python bench/status_bench.py
	$(BIN)/python bench/accept_bench.py

# What only the benchmarks need: wrk (Debian) and bench/requirements.txt (matplotlib) in the venv.
bench-tools: venv
	@command -v wrk >/dev/null || { echo "installing wrk"; apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
	$(BIN)/pip install -q --disable-pip-version-check -r bench/requirements.txt

# Coverage-guided fuzzing (atheris) of the request decoders, the GET path decoder and the HTTP handling,
# FUZZ_SECONDS per target (three targets, one after another); findings go to tests/vectors/fuzz/.
FUZZ_SECONDS ?= 60
fuzz: venv fuzz-tools
	$(BIN)/python -m fuzz.run --seconds $(FUZZ_SECONDS)

# A real signer and frontend (two workers each) on a demo PKI of their own, under mixed valid and invalid
# load with rotations and status data changes, SOAK_SECONDS long (loopback only); prints a table and
# fails on a failed or wrong answer, or RSS/fd growth (bench/soak.py; README "make soak").
SOAK_SECONDS ?= 180
soak: venv softhsm
	$(BIN)/python bench/soak.py --seconds $(SOAK_SECONDS)

# What only the fuzzer needs: fuzz/requirements.txt (atheris) in the venv.
fuzz-tools: venv
	$(BIN)/pip install -q --disable-pip-version-check -r fuzz/requirements.txt

# Debian packages: SoftHSM, the OpenSSL CLI, the GnuTLS, NSS and Go (x/crypto/ocsp) clients the tests use, and
# redis-server (the tests start their own, on a unix socket).
system:
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if ! $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then missing="$$missing venv"; fi; \
	if [ ! -d /usr/share/gocode/src/golang.org/x/crypto/ocsp ]; then missing="$$missing x/crypto"; fi; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages (missing:$$missing)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    softhsm2 openssl libnss3-tools gnutls-bin python3-venv \
	    golang-go golang-golang-x-crypto-dev redis-server >/dev/null; \
	fi

$(BIN)/activate: requirements.lock pyproject.toml | system
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(BIN)/activate

venv: system $(BIN)/activate

# A project-local SoftHSM token directory, so nothing touches /var/lib/softhsm.
softhsm: $(VAR)/softhsm2.conf
$(VAR)/softhsm2.conf: softhsm/softhsm2.conf.in
	mkdir -p $(VAR)/softhsm/tokens
	sed 's|@TOKENDIR@|$(VAR)/softhsm/tokens|' $< > $@

proto: venv
	$(BIN)/python -m shared.rpc.generate

check-proto: venv
	$(BIN)/python -m shared.rpc.generate --check

clean:
	rm -rf $(VAR) $(VENV) *.egg-info
