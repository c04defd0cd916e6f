# The two commands a user needs are `make demo` and `make test`; both set up
# everything first (scripts/setup.sh is idempotent and cached).
SHELL := /bin/bash
include scripts/versions.env

CACHE ?= $(or $(PALISADE_CACHE),$(HOME)/.cache/palisade)
export PALISADE_CACHE := $(CACHE)
export PATH := $(CACHE)/bpf-linker-$(BPF_LINKER_VERSION)-$(EBPF_TOOLCHAIN)/bin:$(HOME)/.cargo/bin:$(PATH)
CARGO := cargo +$(USER_TOOLCHAIN)
EBPF_CARGO := cargo +$(EBPF_TOOLCHAIN)
EBPF_CRATES := -p ebpf-xdp -p ebpf-tc -p ebpf-lsm

.PHONY: setup build demo test lint unit privileged scenarios chaos chaos-short soak guest guest-suite guest-scenarios bench bench-peers bench-churn clean image

setup:
	@scripts/setup.sh

build: setup
	$(CARGO) build --release -p palisade-cli

demo: build
	scripts/demo.sh target/release/palisade

# Everything: lint, unit, privileged (root, netns, bpffs), the scenario
# suite natively, the QEMU guest tests, and the SCTP and the process and
# file (BPF-LSM) scenarios in the guest.
test: setup lint unit privileged scenarios chaos-short guest-suite
	@$(SKIPPED_SUMMARY)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --exclude ebpf-xdp --exclude ebpf-tc --exclude ebpf-lsm --all-targets -- -D warnings
	# The node image's build: the binary without the lab.
	$(CARGO) clippy -p palisade-cli --no-default-features -- -D warnings
	$(EBPF_CARGO) clippy $(EBPF_CRATES) --release --target bpfel-unknown-none -Z build-std=core -- -D warnings

unit:
	$(CARGO) test
	# The install (manifests/): rendered by kubectl, checked against the API types; no root.
	$(CARGO) test -p palisade-tests --test install

# The daemon test runs the palisade binary as its own process. A test that
# cannot run here (a kernel feature missing) reports "ignored (reason)";
# the summary at the end lists them, so a skip never reads as a pass.
PRIVILEGED_LOG := target/privileged.log
SKIPPED_SUMMARY = skipped=$$(grep -E '^test [^ ]+ +\.\.\. ignored' $(PRIVILEGED_LOG) 2>/dev/null || true); \
	if [ -n "$$skipped" ]; then \
	  echo "privileged tests skipped, not passed ($$(echo "$$skipped" | wc -l)):"; \
	  echo "$$skipped" | sed -E 's/^test ([^ ]+) +\.\.\. ignored,? ?/  \1: /'; \
	else echo "privileged tests skipped: none"; fi
privileged:
	$(CARGO) build -p palisade-cli
	@set -o pipefail; status=0; \
	$(CARGO) test -p palisade-tests -- --test-threads=1 2>&1 | tee $(PRIVILEGED_LOG) || status=$$?; \
	$(SKIPPED_SUMMARY); exit $$status

# The scenario suite (docs/SCENARIOS.md) against the real daemon, twice:
# with the file source, and with the Kubernetes source fed by the lab's
# test API server (every change an API write). SCTP scenarios live in
# tests/scenarios/sctp/ and process and file ones in tests/scenarios/lsm/,
# and run in the guest.
# The debug binary (built for the privileged tests already): a release build
# would add 8 minutes to `make test` and cover nothing more. Both ways at
# once: the probes wait on the network, not the CPU.
scenarios: setup
	$(CARGO) build -p palisade-cli
	@( time target/debug/palisade lab run --via kube tests/scenarios/*.yaml ) > target/scenarios-kube.log 2>&1 & kube=$$!; \
	time target/debug/palisade lab run tests/scenarios/*.yaml; files=$$?; \
	wait $$kube; via_kube=$$?; echo "--- the same through the Kubernetes source (--via kube):"; \
	cat target/scenarios-kube.log; exit $$(( files || via_kube ))

# The daemon under faults (docs/CHAOS.md) with a probe load and held
# connections, through both sources; each run ends with its `chaos:` line
# and fails on a wrong verdict or a broken held flow.
chaos: setup
	$(CARGO) build -p palisade-cli
	target/debug/palisade lab chaos
	target/debug/palisade lab chaos --via kube

# 30 minutes of the chaos load while pods, namespaces and policies change
# without pause; bench/results/soak.{csv,svg}. Not part of `make test`.
soak: setup
	$(CARGO) build -p palisade-cli
	target/debug/palisade lab soak --minutes $(or $(SOAK_MINUTES),30) --out bench/results

# The faults that take seconds, for `make test`.
chaos-short: setup
	$(CARGO) build -p palisade-cli
	target/debug/palisade lab chaos --short

# Scenario files (anywhere) in the QEMU guest: make guest-scenarios FILES="a.yaml b.yaml"
guest-scenarios: setup
	tests/vm/guest-scenarios.sh $(FILES) $(if $(LAB_ARGS),-- $(LAB_ARGS))

# The loader, attach and LSM tests again on Debian's 6.1 kernel in QEMU.
guest: setup
	tests/vm/guest-tests.sh

# `make guest`'s tests, and the SCTP and LSM scenarios both ways: six jobs,
# two guests at a time (tests/vm/guest-suite.sh).
guest-suite: setup
	tests/vm/guest-suite.sh

# The datapath and loader natively; the LSM programs in the QEMU guest.
bench: build
	$(CARGO) run --release -p palisade-bench
	$(CARGO) run --release -p palisade-bench -- --in-force target/release/palisade
	tests/vm/guest-bench.sh

# Whole-path packet rates against nftables and iptables, 10 to 10,000
# rules (trafgen in a lab pod; at most 5 minutes): bench/results/peers.{md,svg}.
bench-peers: build
	$(CARGO) build --release -p palisade-bench
	target/release/palisade-bench --peers target/release/palisade --out bench/results

# Policy churn at cluster scale: change to in force for nine kinds of
# change at 10,000 pods and 1,000 policies, beside the same deltas with
# nft and iptables (at most about 10 minutes): bench/results/churn.{md,csv}.
bench-churn: build
	$(CARGO) build --release -p palisade-bench
	target/release/palisade-bench --churn target/release/palisade --out bench/results

# The node image (static musl binary, FROM scratch) with podman, and
# --version run from it.
image: setup
	scripts/image.sh

clean:
	$(CARGO) clean
