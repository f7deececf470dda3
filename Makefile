# gosec: a userspace IPsec stack in Go.
# make demo   two namespaces, a tunnel, a ping, gosec statusall (as root)
# make test   everything CI runs (installs missing Debian packages itself)

GO       ?= go
BIN      := bin/gosec
PKGS     := ./...
# Unit tests: everything but the end-to-end suites under test/.
UNIT_PKGS = $(shell $(GO) list ./... | grep -v '/test/')
# Packages whose code runs concurrently; they are tested with -race.
RACE_PKGS := ./esp/... ./ah/... ./sad/... ./spd/... ./ike/... ./internal/...
FUZZTIME ?= 10s

deb: man
	scripts/mkdeb.sh bin

# gosec.conf(5) from the keyword tables gosec conf check uses.
man:
	$(GO) generate ./internal/conf

.PHONY: deb man all build test test-unit test-race test-e2e deps lint vet fmt bench bench-e2e bench-flood bench-pipeline bench-tunqueues bench-pinghops bench-ike bench-scale fuzz fuzz-ci demo clean

all: build

# CGO_ENABLED=0: `gosec start --user` changes the credentials of every
# thread, which the Go runtime refuses when cgo is linked in.
build:
	CGO_ENABLED=0 $(GO) build -o $(BIN) ./cmd/gosec

deps:
	scripts/deps.sh test

lint: vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

fmt:
	gofmt -w $$(git ls-files '*.go')

test-unit:
	$(GO) test -count=1 $(UNIT_PKGS)

# End-to-end suites in network namespaces (root): gosec against gosec,
# scapy, tshark and the Linux kernel's ESP/AH in a QEMU guest. One package
# at a time (-p 1): the lifecycle suites count lost pings across rekeys,
# and the QEMU guest takes a whole core of the two.
test-e2e: build
	$(GO) test -count=1 -p 1 -timeout 60m ./test/...

test-race:
	$(GO) test -count=1 -race $(RACE_PKGS)

# Brief fuzzing of every network-bytes parser (CI); `make fuzz` runs longer.
fuzz-ci:
	FUZZTIME=3s scripts/fuzz.sh

fuzz:
	FUZZTIME=$(FUZZTIME) scripts/fuzz.sh

test: deps lint build test-unit test-race test-e2e fuzz-ci

# Two namespaces, a gosec gateway in each, a tunnel, a ping, statusall.
demo: build
	scripts/deps.sh demo
	scripts/demo.sh

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./esp/ ./ah/ ./sad/ ./spd/ ./internal/integ/ ./internal/dataplane/
	scripts/bench-esp-ratio.sh

# The data plane's parallel pipeline without the kernel (fake devices):
# throughput per GOMAXPROCS 1..nproc, scaling, packets/s per core.
bench-pipeline:
	scripts/bench-pipeline.sh

# LAN-to-LAN throughput, latency and CPU: gosec (raw ESP, ESP-in-UDP) vs
# plain routing vs strongSwan vs a null relay (the latency control), four
# suites, with the goals of issue 12.
bench-e2e: build
	scripts/deps.sh bench
	flock /tmp/gosec-roottests.lock scripts/bench-e2e.sh

# Two tunnels at once through gw1 with 1 and 2 TUN queues, interleaved:
# does the per-destination steering let a gateway seal them on two cores?
bench-tunqueues: build
	scripts/deps.sh bench
	flock /tmp/gosec-roottests.lock scripts/bench-tunqueues.sh $(TUNQ_ARGS)

# Where a ping's time goes: each gateway's share of the round trip, from
# timestamps on its LAN and WAN links.
bench-pinghops: build
	scripts/deps.sh bench
	flock /tmp/gosec-roottests.lock scripts/bench-pinghops.sh

# AES-GCM throughput while forged ESP (unknown SPI, bad ICV) floods the
# receiving gateway, and BenchmarkDrop's allocations (issue 12).
bench-flood: build
	scripts/deps.sh bench
	flock /tmp/gosec-roottests.lock scripts/bench-flood.sh

# IKE under floods (root, namespaces): spoofed maximum-size first
# messages and Diffie-Hellman third messages against gosec while an
# established tunnel rekeys and runs DPD, and strongSwan connects.
bench-ike:
	scripts/deps.sh bench
	flock /tmp/gosec-roottests.lock scripts/bench-ike.sh

# N IKE-negotiated tunnels in one daemon (root, namespaces gsc-*):
# bring-up time, memory per tunnel, status cost, traffic on a sample,
# SPD/SAD lookup cost. SCALE_ARGS="-n 2000" for a shorter run.
bench-scale:
	scripts/deps.sh bench
	flock /tmp/gosec-roottests.lock scripts/bench-scale.sh $(SCALE_ARGS)

clean:
	rm -rf bin
