# Two commands on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed
SERVE_CONFIG ?= serve_config.yaml
export RAY_USAGE_STATS_ENABLED ?= 0
# Serve's proxy answers 500 to non-UTF-8 session/request-id headers; this guard makes them 400 (deployments/http/proxy_guard.py).
export RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH ?= deployments.http.proxy_guard:proxy_middlewares

.PHONY: install model serve chat test test-fast clean-venv

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python >= 3.11 is required ($(PYTHON) is older)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(STAMP)

model: install
	$(VENV)/bin/swiftinfer fetch-model

# Starts a local Ray head (if none runs) and the Serve application on 127.0.0.1:8000
# (serve_config.yaml; a network address needs API keys: README "Security"); Ctrl-C stops it.
# HAPROXY=1: Serve's HAProxy ingress in place of its Python HTTP proxy (README "HAProxy in front").
HAPROXY ?= $(or $(RAY_SERVE_ENABLE_HA_PROXY),0)
# FRONT=direct: every LLM replica serves HTTP itself behind HAProxy (README "Each replica serves its own streams"):
# the config with `http_front: direct` added to the app's args, and the two Serve flags that mode needs; HAProxy
# also shows the route picker each request body up to 64 KiB, so sessions named only in the body route directly.
FRONT ?= ingress
DIRECT_ENV = RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_ENABLE_DIRECT_INGRESS=1 RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY=1 \
	RAY_SERVE_HAPROXY_INGRESS_REQUEST_ROUTER_BUFSIZE=65536
serve: model
ifeq ($(FRONT),direct)
	sed 's/^\( *\)args: *$$/&\n\1  http_front: direct/' $(SERVE_CONFIG) > .serve_direct.yaml
	$(DIRECT_ENV) $(VENV)/bin/serve run .serve_direct.yaml
else
	RAY_SERVE_ENABLE_HA_PROXY=$(HAPROXY) $(VENV)/bin/serve run $(SERVE_CONFIG)
endif

chat: model
	$(VENV)/bin/swiftinfer chat

# browser_deps.sh: Chromium for the playground's browser tests (installed as root, else they skip)
test: model
	sh tests/browser_deps.sh
	$(PY) -m pytest -q -ra --durations=30

test-fast: model
	sh tests/browser_deps.sh
	$(PY) -m pytest -q -ra -m "not slow"

clean-venv:
	rm -rf $(VENV)
