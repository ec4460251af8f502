# xpupool developer entry points. Two commands do all set-up on a fresh machine:
#   make demo   -> installs into .venv and runs the demo on an emulated pool
#   make test   -> installs, builds native code and test binaries, runs lint, types and every test
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: remote-deps setup demo test lint typecheck pytest native test-native kube-bins helm node image test-node view-tools e2e bench bench-kube simulate clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/xpupool demo

lint: setup
	$(VENV)/bin/ruff check src tests bench

typecheck: setup
	$(VENV)/bin/mypy

native: setup
	$(MAKE) -C native PYTHON=$(abspath $(PY))

test-native: native
	$(MAKE) -C native test PYTHON=$(abspath $(PY))

# Builds kube-apiserver, etcd and kube-scheduler from pinned Go modules (cached).
kube-bins:
	bash hack/kube/build.sh

# The real test node (tests/node, marker e2e_node): kubelet, kube-controller-manager and kube-proxy
# from the pinned Kubernetes module, containerd 2.x from the Go module proxy (cached), and runc,
# CNI plugins, iptables, busybox-static from Debian (apt-get when missing and root).
node: kube-bins
	bash hack/kube/build.sh kubelet kube-controller-manager kube-proxy
	bash hack/node/build.sh

# The xpupool image (deploy/image/Containerfile, tagged as the chart's default) and the test-double
# workload image, built without a Docker engine (buildah + a base made with mmdebstrap), cached
# by input hash under ~/.cache/xpupool/images.
image: setup
	$(PY) -m xpupool.kube.testing_images xpupool workload

# The node suite alone (needs root; one node for the whole run).
test-node: setup node image
	$(PY) -m pytest -q -m e2e_node tests/node $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# Builds helm from the Go module proxy (pinned, cached) for the chart lint/render tests.
helm:
	bash hack/helm/install.sh

# Debian's chromium (web-page test) and prometheus (promtool: alert-rule tests), when missing.
view-tools:
	bash hack/view/install-tools.sh

# pytest exit code 5 (no tests collected) is a failure, never hidden.
pytest: setup
	$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# Remote vXPUs build against OpenSSL (libssl-dev) and their fault tests make a network namespace
# (iproute2): installed from Debian when missing (CI runs as root).
remote-deps:
	@if ! test -f /usr/include/openssl/ssl.h || ! command -v ip >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libssl-dev iproute2 >/dev/null; fi

test: setup kube-bins helm node image view-tools remote-deps lint typecheck test-native pytest

# Everything that needs a real cluster: the apiserver layer (charts included) and the real node.
e2e: setup kube-bins helm node image
	$(PY) -m pytest -q -m "e2e_apiserver or e2e_node" tests; rc=$$?; if [ $$rc -eq 5 ]; then exit 1; fi; exit $$rc

simulate: setup
	$(VENV)/bin/xpupool simulate

bench: setup
	$(PY) bench/placement_latency.py
	$(MAKE) -C native bench PYTHON=$(abspath $(PY))

bench-kube: setup kube-bins
	$(PY) bench/kube/bind_throughput.py

clean:
	rm -rf $(VENV) native/build .pytest_cache .mypy_cache .ruff_cache
