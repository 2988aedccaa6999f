# BACKBEAT pulse — developer entry points.
#   make deps      install the Debian packages the build and tests need (root)
#   make build     debug build of pulse and Bench
#   make run       start a local nats-server (127.0.0.1:4222) and one node, show beats live
#   make test-all  every admin endpoint with sample requests against a live node
#   make test      every test: unit, property, allocation, real nats-server processes,
#                  plus the release build that enforces @_noAllocation
#   make bench     the timing report (release)
#   make bench-micro  micro-benchmarks on ordo-one/benchmark (perf/micro); fails on a regression
#   make test-browser  the live view (GET /) in headless Chromium against a live 3-node cluster
#   make fuzz      every libFuzzer harness for FUZZ_SECONDS each (docs/fuzzing.md);
#                  make fuzz-smoke: a few seconds each (part of make test)
#   make sim       the whole-cluster simulator: SEEDS=N seeds (default 2000), then MEMBER_SEEDS=M (default 300)
#                  with node replacements; SIM_SEED=S replays one
SHELL := /bin/bash
SWIFT ?= swift
NATS_PORT ?= 4222
ADMIN_PORT ?= 8080
BPM ?= 120
RUN_DIR ?= run
APT_PACKAGES := libnats-dev libjemalloc-dev libhttp-parser-dev libsodium-dev nats-server prometheus curl iproute2 iptables pkg-config \
  libssl-dev openssl python3 python3-venv python3-pip python3-jsonschema chromium chromium-driver python3-selenium \
  docker-compose systemd golang-go golang-github-nats-io-go-nats-dev podman buildah debootstrap runc
PYTHON ?= python3
VENV := .venv

.PHONY: deps build-info build release install dist test-dist docs image-deps image image-dist test-image test-image-source run dev cluster certs cluster-tls test test-deploy test-kubernetes test-unit test-python test-go test-browser test-all check-noalloc bench bench-scale bench-soak bench-micro bench-micro-update \
	format clean fuzz fuzz-build fuzz-smoke sim

deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# The commit `pulse --version` and backbeat_build_info report: written to a
# git-ignored header that Sources/CLoop/cloop_build.c includes when present
# (a plain `swift build` says "unknown"); rewritten only when it changes.
build-info:
	@c=$$(git describe --always --dirty 2>/dev/null || echo unknown); line="#define CLOOP_BUILD_COMMIT \"$$c\""; \
	if [ "$$(cat Sources/CLoop/build_commit.h 2>/dev/null)" != "$$line" ]; then \
	  echo "$$line" > Sources/CLoop/build_commit.h; touch Sources/CLoop/cloop_build.c; fi

build: build-info
	$(SWIFT) build --product pulse
	$(SWIFT) build --product Bench

release: build-info
	$(SWIFT) build -c release --product pulse

# make install [PREFIX=/usr/local] [DESTDIR=]: the release pulse, the systemd
# unit (ExecStart at $(PREFIX)/bin/pulse), the docs and `pulse --help` as
# text (scripts/install.sh). make dist: dist/backbeat-pulse-VERSION-linux-ARCH.tar.gz,
# the release pulse with the Swift runtime linked in, that layout, and
# DEPENDENCIES: each shared library it loads and its Debian package (scripts/dist.sh).
PREFIX ?= /usr/local
DESTDIR ?=
install: release
	scripts/install.sh "$$($(SWIFT) build -c release --show-bin-path)/pulse" "$(PREFIX)" "$(DESTDIR)"

dist: build-info
	$(SWIFT) build -c release --product pulse --static-swift-stdlib
	scripts/dist.sh "$$($(SWIFT) build -c release --show-bin-path)/pulse" dist

# The Swift client's DocC documentation (Sources/BackbeatClient/BackbeatClient.docc,
# swift-docc-plugin): a static archive in .build/docs; a broken symbol link or any
# other DocC warning fails (part of make test: ~15 s once the debug build exists).
DOCS_DIR := .build/docs
docs:
	@mkdir -p $(DOCS_DIR)
	$(SWIFT) package --allow-writing-to-directory $(DOCS_DIR) generate-documentation --target BackbeatClient \
	  --warnings-as-errors --output-path $(DOCS_DIR)/BackbeatClient.doccarchive

# make test-dist: make dist, then its tarball checked as a user unpacking it
# meets it (scripts/test-dist.sh: layout, root-owned entries, the unpacked
# binary's --version says a release of VERSION, DEPENDENCIES names every
# library it loads with the installed package version).
VERSION := $(shell sed -n 's/^ *public static let version = "\(.*\)"$$/\1/p' $$(grep -rl 'static let version = ' Sources))
DIST_NAME := backbeat-pulse-$(VERSION)-linux-$(shell uname -m)
test-dist: dist
	scripts/test-dist.sh dist/$(DIST_NAME).tar.gz

# make image: deploy/Dockerfile built with rootful podman (Debian podman,
# buildah, debootstrap), its two base images made locally from Debian
# packages and this machine's Swift toolchain when no registry has them
# (scripts/make-base-images.sh). make test-image: the Dockerfile's `dist`
# target (its runtime stage with the binary of make dist's tarball, checked
# by test-dist first: no Swift toolchain in the image, no second release
# build), then nats-server and three containers of it on the host network,
# each with a fresh named volume as its data dir: frames, /metrics from each,
# the leader's container killed, frames again within 1 s, and in the image
# every package DEPENDENCIES names (scripts/test-image.py). make
# test-image-source: the same run on the image make image builds from source.
# Here, build steps run with chroot isolation and containers with runc and
# explicit ulimits (hybrid cgroups stop crun; default rlimits are refused);
# --format docker keeps the HEALTHCHECK (the OCI format has none).
IMAGE ?= backbeat/pulse:$(VERSION)
IMAGE_DIST ?= backbeat/pulse:$(VERSION)-dist
IMAGE_PACKAGES := podman buildah debootstrap runc
image-deps:
	@missing=""; for p in $(IMAGE_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv --system-site-packages $(VENV)
	@$(VENV)/bin/python -c "import nats" 2>/dev/null || $(VENV)/bin/pip install -q nats-py

image: image-deps
	scripts/make-base-images.sh
	podman build --isolation chroot --format docker -f deploy/Dockerfile \
	  --build-arg COMMIT=$$(git describe --always --dirty) -t $(IMAGE) .

image-dist: image-deps test-dist
	scripts/make-base-images.sh debian
	rm -rf dist/image && mkdir -p dist/image && tar -C dist/image -xzf dist/$(DIST_NAME).tar.gz
	podman build --isolation chroot --format docker -f deploy/Dockerfile --target dist -t $(IMAGE_DIST) \
	  dist/image/$(DIST_NAME)

test-image: image-dist
	$(VENV)/bin/python scripts/test-image.py $(IMAGE_DIST) dist/image/$(DIST_NAME)/DEPENDENCIES

test-image-source: image
	$(VENV)/bin/python scripts/test-image.py $(IMAGE)

# A local nats-server on loopback plus one bootstrapped node, and the beats live.
# Ctrl-C stops all three.
run dev: deps build
	@mkdir -p $(RUN_DIR)
	@bin=$$($(SWIFT) build --show-bin-path)/pulse; \
	nats-server -a 127.0.0.1 -p $(NATS_PORT) > $(RUN_DIR)/nats.log 2>&1 & nats_pid=$$!; \
	trap 'kill $$node_pid $$nats_pid 2>/dev/null; wait 2>/dev/null' EXIT INT TERM; \
	sleep 0.3; \
	$$bin -bootstrap -bpm $(BPM) -max-bpm 600 -nats nats://127.0.0.1:$(NATS_PORT) \
	  -admin-port $(ADMIN_PORT) -data-dir $(RUN_DIR)/node1 > $(RUN_DIR)/node1.log 2>&1 & node_pid=$$!; \
	echo "nats-server pid $$nats_pid, pulse pid $$node_pid (logs in $(RUN_DIR)/); Ctrl-C to stop; a consumer: swift run backbeat-example nats://127.0.0.1:$(NATS_PORT) (examples/)"; \
	$$bin watch -nats nats://127.0.0.1:$(NATS_PORT)

# nats-server plus a three-node Raft cluster on admin ports 8080/8081/8082
# (Raft on 127.0.0.1:7001-7003), logs labelled per node, and the beats live.
# Ctrl-C stops the nodes by pid (the leader hands over), then nats-server, and exits quietly.
PEERS := n1@127.0.0.1:7001,n2@127.0.0.1:7002,n3@127.0.0.1:7003
cluster: build
	@mkdir -p $(RUN_DIR)
	@bin=$$($(SWIFT) build --show-bin-path)/pulse; \
	nats-server -a 127.0.0.1 -p $(NATS_PORT) > $(RUN_DIR)/nats.log 2>&1 & nats_pid=$$!; nodes=""; \
	trap 'trap - EXIT INT TERM; kill $$nodes 2>/dev/null; wait $$nodes 2>/dev/null; kill $$nats_pid 2>/dev/null; wait 2>/dev/null; exit 0' EXIT INT TERM; \
	sleep 0.3; \
	for i in 1 2 3; do \
	  $$bin -bootstrap -bpm $(BPM) -max-bpm 600 -nats nats://127.0.0.1:$(NATS_PORT) -node-id n$$i \
	      -raft-bind 127.0.0.1:700$$i -peers $(PEERS) -admin-port 808$$((i-1)) -data-dir $(RUN_DIR)/n$$i \
	      > >(trap '' INT TERM; exec sed -u "s/^/[n$$i] /" >> $(RUN_DIR)/cluster.log) 2>&1 & nodes="$$nodes $$!"; \
	done; \
	echo "cluster up: admin on :8080 :8081 :8082, logs in $(RUN_DIR)/cluster.log; Ctrl-C to stop"; \
	$$bin watch -nats nats://127.0.0.1:$(NATS_PORT)

# A throwaway CA and certificates for n1..n3 in $(RUN_DIR)/certs (scripts/certs.sh).
certs:
	@[ -f $(RUN_DIR)/certs/n3.pem ] || scripts/certs.sh $(RUN_DIR)/certs n1 n2 n3

# `make cluster` with the Raft traffic over mutual TLS (certificates from `make certs`).
cluster-tls: build certs
	@mkdir -p $(RUN_DIR)
	@bin=$$($(SWIFT) build --show-bin-path)/pulse; certs=$(RUN_DIR)/certs; \
	nats-server -a 127.0.0.1 -p $(NATS_PORT) > $(RUN_DIR)/nats.log 2>&1 & nats_pid=$$!; nodes=""; \
	trap 'trap - EXIT INT TERM; kill $$nodes 2>/dev/null; wait $$nodes 2>/dev/null; kill $$nats_pid 2>/dev/null; wait 2>/dev/null; exit 0' EXIT INT TERM; \
	sleep 0.3; \
	for i in 1 2 3; do \
	  $$bin -bootstrap -bpm $(BPM) -max-bpm 600 -nats nats://127.0.0.1:$(NATS_PORT) -node-id n$$i \
	      -raft-bind 127.0.0.1:700$$i -peers $(PEERS) -admin-port 808$$((i-1)) -data-dir $(RUN_DIR)/tls-n$$i \
	      -raft-tls-cert $$certs/n$$i.pem -raft-tls-key $$certs/n$$i.key -raft-tls-ca $$certs/ca.pem \
	      > >(trap '' INT TERM; exec sed -u "s/^/[n$$i] /" >> $(RUN_DIR)/cluster.log) 2>&1 & nodes="$$nodes $$!"; \
	done; \
	echo "TLS cluster up: admin on :8080 :8081 :8082, logs in $(RUN_DIR)/cluster.log; Ctrl-C to stop"; \
	$$bin watch -nats nats://127.0.0.1:$(NATS_PORT)

test: deps test-deploy test-kubernetes check-noalloc test-unit docs test-python test-go test-browser fuzz-smoke

# Line-buffered (stdbuf): a test process that crashes still shows which test
# it was in ("Test Case '…' started" reaches the log before the backtrace).
test-unit: build-info
	$(SWIFT) build
	$(SWIFT) build --build-tests
	stdbuf -oL -eL $(SWIFT) test --skip-build

# The Python client (clients/python, nats-py from PyPI in a git-ignored venv
# that sees Debian's jsonschema) under pytest: unit and vector tests, a live
# 3-node cluster (every frame, timeline and control reply it sees checked
# against docs/schema), forged messages; then its packaging: mypy --strict,
# python -m build (sdist and wheel) and twine check --strict.
test-python: build
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv --system-site-packages $(VENV)
	@$(VENV)/bin/python -c "import nats, jsonschema, pytest, mypy, build, twine, nacl" 2>/dev/null \
	  || $(VENV)/bin/pip install -q nats-py jsonschema pytest mypy build twine pynacl
	PULSE_BIN=$$($(SWIFT) build --show-bin-path)/pulse $(VENV)/bin/python -m pytest -q clients/python
	cd clients/python && ../../$(VENV)/bin/mypy --strict backbeat_client
	@rm -rf $(RUN_DIR)/python-dist
	$(VENV)/bin/python -m build -q --outdir $(RUN_DIR)/python-dist clients/python
	$(VENV)/bin/twine check --strict $(RUN_DIR)/python-dist/*
	@rm -rf clients/python/backbeat_client.egg-info

# The Go client (clients/go, on nats.go) offline, with what Debian ships:
# GOPATH mode over /usr/share/gocode (golang-go, golang-github-nats-io-go-nats-dev),
# the package linked at its import path in a git-ignored GOPATH; `go vet`, then
# its tests: the vectors (docs/vectors) and the live ones against real processes.
GO_IMPORT := github.com/backbeat-pulse/pulse/clients/go
GO_ENV := GO111MODULE=off GOFLAGS= GOPATH=$(CURDIR)/.build/gopath:/usr/share/gocode GOCACHE=$(CURDIR)/.build/gocache
test-go: build
	@mkdir -p .build/gopath/src/$(dir $(GO_IMPORT)) && ln -sfn $(CURDIR)/clients/go .build/gopath/src/$(GO_IMPORT)
	cd .build/gopath/src/$(GO_IMPORT) && $(GO_ENV) go vet ./... && \
	  PULSE_BIN=$$($(SWIFT) build --show-bin-path)/pulse $(GO_ENV) go test -count=1 -timeout 300s ./...

# The live view in real headless Chromium (Debian chromium, chromium-driver and
# python3-selenium, so Debian's own python3): against a 3-node cluster, the beat
# in step with the subject, downbeats, a tempo change from the page, a
# failover; saves run/live-view.png (docs/ with UPDATE_SCREENSHOT=1). Fails loudly when a package is missing.
BROWSER_PYTHON ?= /usr/bin/python3
test-browser: build
	@scripts/embed-web.sh --check
	PULSE_BIN=$$($(SWIFT) build --show-bin-path)/pulse $(BROWSER_PYTHON) Tests/browser/test_live_view.py

# deploy/kubernetes: `kubectl kustomize` of the base and each overlay, each
# checked offline by kubernetes-validate --strict (PyPI, in the git-ignored
# venv) and by the invariants in scripts/check-kubernetes.py (Parallel pods,
# publishNotReadyAddresses, node id = pod name, peers by DNS, probes, ...).
test-kubernetes:
	@command -v kubectl >/dev/null || { echo "test-kubernetes: kubectl (with kustomize) is required"; exit 1; }
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv --system-site-packages $(VENV)
	@test -x $(VENV)/bin/kubernetes-validate || $(VENV)/bin/pip install -q kubernetes-validate
	$(VENV)/bin/python scripts/check-kubernetes.py $(VENV)/bin/kubernetes-validate

# Every file under deploy/ checked by the tool that owns its format
# (docker-compose config, promtool, systemd-analyze verify; scripts/check-deploy.sh).
test-deploy:
	scripts/check-deploy.sh

# Every admin endpoint against a live node (the seed's test-all).
test-all: build
	PULSE_BIN=$$($(SWIFT) build --show-bin-path)/pulse scripts/test-all.sh

# @_noAllocation is checked by the compiler in optimized builds only.
# --static-swift-stdlib as make dist builds: make test-image (after make test
# in .ci/run) then reuses these release objects instead of compiling them again.
check-noalloc:
	$(SWIFT) build -c release --target PulseCore --static-swift-stdlib

# The timing report. Installs the optional floor/load tools when missing
# (cyclictest, stress-ng, wrk; Bench falls back to its own probes without them).
BENCH_PACKAGES := rt-tests stress-ng wrk
bench:
	@missing=""; for p in $(BENCH_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y -qq $$missing >/dev/null || echo "note: could not install$$missing"; \
	fi
	$(SWIFT) build -c release --product pulse
	$(SWIFT) build -c release --product ClockSkew
	$(SWIFT) run -c release Bench $(BENCH_ARGS)

# How cost grows (cluster size, subscribers, timeline requests/s, tempo) and
# PER-003 on real processes (a node's clock 500 ppm fast, alone; twice): ~15 minutes.
bench-scale:
	@mkdir -p $(RUN_DIR)
	$(MAKE) bench BENCH_ARGS="--scenarios drift,scale --json $(RUN_DIR)/bench-scale.json --html $(RUN_DIR)/bench-scale.html $(BENCH_ARGS)"

# The soak: one pulse for SOAK_SECONDS (default an hour) at normal priority;
# RSS, descriptors and jitter per 10-minute window.
SOAK_SECONDS ?= 3600
bench-soak:
	@mkdir -p $(RUN_DIR)
	$(MAKE) bench BENCH_ARGS="--soak $(SOAK_SECONDS) --json $(RUN_DIR)/bench-soak.json --html $(RUN_DIR)/bench-soak.html $(BENCH_ARGS)"

# Micro-benchmarks of the beat path's pure code (timeline math, HLC, encoder,
# decoder) on ordo-one/benchmark, in their own package (perf/micro) so the
# service build never builds the harness. `bench-micro` runs them and fails
# (non-zero) when a p90 is worse than the stored thresholds (perf/micro/Thresholds:
# malloc counts exactly, wall clock within 100 %); `bench-micro-update` rewrites
# the thresholds after an intended change (review the diff before committing).
bench-micro:
	cd perf/micro && $(SWIFT) package benchmark thresholds check --no-progress
bench-micro-update:
	cd perf/micro && $(SWIFT) package --allow-writing-to-package-directory benchmark thresholds update --no-progress

# libFuzzer harnesses (docs/fuzzing.md). Harness `h` is the executable target
# Fuzz<H> (Sources/Fuzz<H>/), seeds in Fuzz/corpus/h/ (read only), an optional
# dictionary Fuzz/dict/h.dict; new inputs go to Fuzz/work/h/ and crashes to
# Fuzz/artifacts/h/ (both git-ignored), the full log to Fuzz/artifacts/h.log.
# Built in release with coverage in .build-fuzz, so the normal build is untouched.
FUZZ_HARNESSES ?= raft control http beat datadir
FUZZ_SECONDS ?= 60
FUZZ_SMOKE_SECONDS ?= 4
FUZZ_SCRATCH ?= .build-fuzz
FUZZ_OPTIONS ?= -max_len=16384 -timeout=10 -rss_limit_mb=2048
FUZZ_BUILD := $(SWIFT) build -c release --sanitize=fuzzer --scratch-path $(FUZZ_SCRATCH) \
	-Xswiftc -enable-testing -Xswiftc -DFUZZING

fuzz-build:
	@for h in $(FUZZ_HARNESSES); do $(FUZZ_BUILD) --product Fuzz$${h^} || exit 1; done

# Runs each harness for FUZZ_SECONDS and prints libFuzzer's summary; fails
# (after running them all) if any harness crashed.
fuzz: fuzz-build
	@bin=$$($(FUZZ_BUILD) --show-bin-path); failed=""; \
	for h in $(FUZZ_HARNESSES); do \
	  mkdir -p Fuzz/work/$$h Fuzz/artifacts/$$h; \
	  dict=""; [ -f Fuzz/dict/$$h.dict ] && dict="-dict=Fuzz/dict/$$h.dict"; \
	  echo "== $$h: Fuzz$${h^} for $(FUZZ_SECONDS) s"; \
	  SWIFT_BACKTRACE=enable=no $$bin/Fuzz$${h^} Fuzz/work/$$h Fuzz/corpus/$$h $$dict \
	    -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 -artifact_prefix=Fuzz/artifacts/$$h/ \
	    $(FUZZ_OPTIONS) > Fuzz/artifacts/$$h.log 2>&1; rc=$$?; \
	  awk '/^INFO: seed|^#[0-9]+[[:space:]]+(INITED|DONE)|^Done [0-9]+ runs|^stat::|== ERROR|^SUMMARY:|Test unit written|Fatal error/ { print } \
	    /^ +#[0-9]+ .*\/Sources\// && frames++ < 4 { print }' Fuzz/artifacts/$$h.log; \
	  if [ $$rc -ne 0 ]; then failed="$$failed $$h"; echo "== $$h FAILED (exit $$rc): Fuzz/artifacts/$$h.log"; fi; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: crashes in:$$failed (reproduce: $$bin/Fuzz<H> <artifact>)"; exit 1; fi

fuzz-smoke:
	@$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=$(FUZZ_SMOKE_SECONDS)

# The whole-cluster deterministic simulator (Tests/ClusterSimTests): one
# summary line `seeds=N steps=… crashes=… restarts=… violations=0` (crashes and restarts from
# the simulated disk under the service's RaftStore), then how often each invariant
# was exercised; a violation prints its one-line replay (SIM_SEED=… make sim).
# MEMBER_SEEDS more seeds run with node replacements (ClusterSimMembershipTests).
# SEEDS seeds of the nats-kv mode's model too (KVLeaseSimTests: the lease and
# timeline policies against a model JetStream KV; line `seeds=N mode=nats-kv … violations=0`).
SEEDS ?= 2000
MEMBER_SEEDS ?= 300
sim:
	@$(SWIFT) build --build-tests 2>&1 | grep -E "error|warning: unre" || true
	@SIM_SEEDS=$(SEEDS) $(SWIFT) test --skip-build --filter 'ClusterSimTests.ClusterSimTests/testSeededClusterSimulation' 2>&1 \
	  | tee .build/sim.log | grep -E "^(seeds=|disk:|exercised:|violation:)"; \
	grep -q "^seeds=.* violations=0 " .build/sim.log
	@SIM_MEMBER_SEEDS=$(MEMBER_SEEDS) $(SWIFT) test --skip-build \
	  --filter 'ClusterSimTests.ClusterSimMembershipTests/testSeededClusterSimulationWithMembershipChanges' 2>&1 \
	  | tee .build/sim-members.log | grep -E "^(seeds=|disk:|exercised:|violation:)"; \
	grep -q "^seeds=.* violations=0 " .build/sim-members.log
	@SIM_KV_SEEDS=$(SEEDS) $(SWIFT) test --skip-build --filter 'ClusterSimTests.KVLeaseSimTests' 2>&1 \
	  | tee .build/sim-kv.log | grep -E "^(seeds=|violation:)"; \
	grep -q "^seeds=.* mode=nats-kv .* violations=0 " .build/sim-kv.log

format:
	$(SWIFT) format -i -r Sources Tests Package.swift

clean:
	rm -rf .build $(FUZZ_SCRATCH) $(RUN_DIR)
