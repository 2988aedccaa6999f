# BACKBEAT pulse — developer entry points.
#   make deps      install the Debian packages the build and tests need (root)
#   make build     debug build of pulse and Bench
#   make run       start a local nats-server (127.0.0.1:4222) and one node, show beats live
#   make test-all  every admin endpoint with sample requests against a live node
#   make test      every test: unit, property, allocation, real nats-server processes,
#                  plus the release build that enforces @_noAllocation
#   make bench     the timing report (release)
#   make sim       the whole-cluster simulator: SEEDS=N seeds (default 2000), or SIM_SEED=S to replay one
SHELL := /bin/bash
SWIFT ?= swift
NATS_PORT ?= 4222
ADMIN_PORT ?= 8080
BPM ?= 120
RUN_DIR ?= run
APT_PACKAGES := libnats-dev libjemalloc-dev libhttp-parser-dev nats-server prometheus curl iproute2 pkg-config

.PHONY: deps build release run dev cluster test test-unit test-all check-noalloc bench sim format clean

deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

build:
	$(SWIFT) build --product pulse
	$(SWIFT) build --product Bench

release:
	$(SWIFT) build -c release --product pulse

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
	echo "nats-server pid $$nats_pid, pulse pid $$node_pid (logs in $(RUN_DIR)/); Ctrl-C to stop"; \
	$$bin watch -nats nats://127.0.0.1:$(NATS_PORT)

# nats-server plus a three-node Raft cluster on admin ports 8080/8081/8082
# (Raft on 127.0.0.1:7001-7003), logs labelled per node, and the beats live.
PEERS := n1@127.0.0.1:7001,n2@127.0.0.1:7002,n3@127.0.0.1:7003
cluster: build
	@mkdir -p $(RUN_DIR)
	@bin=$$($(SWIFT) build --show-bin-path)/pulse; \
	nats-server -a 127.0.0.1 -p $(NATS_PORT) > $(RUN_DIR)/nats.log 2>&1 & pids=$$!; \
	trap 'trap - EXIT INT TERM; kill 0 2>/dev/null' EXIT INT TERM; \
	sleep 0.3; \
	for i in 1 2 3; do \
	  ( $$bin -bootstrap -bpm $(BPM) -max-bpm 600 -nats nats://127.0.0.1:$(NATS_PORT) -node-id n$$i \
	      -raft-bind 127.0.0.1:700$$i -peers $(PEERS) -admin-port 808$$((i-1)) -data-dir $(RUN_DIR)/n$$i 2>&1 \
	      | sed -u "s/^/[n$$i] /" >> $(RUN_DIR)/cluster.log ) & pids="$$pids $$!"; \
	done; \
	echo "cluster up: admin on :8080 :8081 :8082, logs in $(RUN_DIR)/cluster.log; Ctrl-C to stop"; \
	$$bin watch -nats nats://127.0.0.1:$(NATS_PORT)

test: deps check-noalloc test-unit

test-unit:
	$(SWIFT) build
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build

# Every admin endpoint against a live node (the seed's test-all).
test-all: build
	PULSE_BIN=$$($(SWIFT) build --show-bin-path)/pulse scripts/test-all.sh

# @_noAllocation is checked by the compiler in optimized builds only.
check-noalloc:
	$(SWIFT) build -c release --target PulseCore

# The timing report. Installs the optional floor/load tools when missing
# (cyclictest, stress-ng, wrk; Bench falls back to its own probes without them).
BENCH_PACKAGES := rt-tests stress-ng wrk
bench:
	@missing=""; for p in $(BENCH_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y -qq $$missing >/dev/null || echo "note: could not install$$missing"; \
	fi
	$(SWIFT) build -c release --product pulse
	$(SWIFT) run -c release Bench $(BENCH_ARGS)

# The whole-cluster deterministic simulator (Tests/ClusterSimTests): one
# summary line `seeds=N steps=… violations=0`, then how often each invariant
# was exercised; a violation prints its one-line replay (SIM_SEED=… make sim).
SEEDS ?= 2000
sim:
	@$(SWIFT) build --build-tests 2>&1 | grep -E "error|warning: unre" || true
	@SIM_SEEDS=$(SEEDS) $(SWIFT) test --skip-build --filter 'ClusterSimTests.ClusterSimTests/testSeededClusterSimulation' 2>&1 \
	  | tee .build/sim.log | grep -E "^(seeds=|exercised:|violation:)"; \
	grep -q "^seeds=.* violations=0 " .build/sim.log

format:
	$(SWIFT) format -i -r Sources Tests Package.swift

clean:
	rm -rf .build $(RUN_DIR)
