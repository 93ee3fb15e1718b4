# Veil: the README's two commands, `make demo` and `make test`, do all the set-up.
SWIFT      ?= swift
BUILD_FLAGS ?=
STACK      := Deploy/local/with-stack.sh

.PHONY: all deps build test demo bench bench-kafka bench-envelope bench-contracts bench-pipeline bench-dispatch bench-pos stack-up stack-down clean

all: build

deps:
	@Deploy/local/install-deps.sh

build: deps
	$(SWIFT) build $(BUILD_FLAGS)

## Runs the whole test suite against a private PostgreSQL and the embedded broker.
test: build
	$(SWIFT) build --build-tests $(BUILD_FLAGS)
	$(STACK) Deploy/local/watch-tests.py $(SWIFT) test --skip-build $(BUILD_FLAGS)
	python3 Deploy/checks/check_deploy.py

## Starts the stack and the seven services, runs the main flow end to end, shows what happened.
demo: build
	$(STACK) Deploy/local/demo.sh

## Benchmarks (release build): Veil's layers against their bare baselines, in one run.
bench: bench-kafka bench-envelope bench-contracts bench-pipeline bench-dispatch bench-pos

bench-kafka: deps
	$(SWIFT) build -c release --product veil-bench
	.build/release/veil-bench kafka --messages $${MESSAGES:-1000000} --size 256 $${KAFKA_BROKERS:+--brokers $$KAFKA_BROKERS}

bench-envelope: deps
	$(SWIFT) build -c release --product veil-bench
	.build/release/veil-bench envelope --seconds 3

## The inquiry payloads' JSON written and read by hand against JSONEncoder and JSONDecoder.
bench-contracts: deps
	$(SWIFT) build -c release --product veil-bench
	.build/release/veil-bench contracts

stack-up: build
	Deploy/local/stack.sh up

stack-down:
	Deploy/local/stack.sh down

clean:
	@if [ -L .veil/pg ]; then rm -rf "$$(readlink -f .veil/pg)"; fi
	rm -rf .build .veil

bench-pipeline: deps
	$(SWIFT) build -c release
	$(STACK) Deploy/local/bench-pipeline.sh

## Assignment decisions/s with 1,000 technicians; request → alert latency p50/p99 at half that rate.
bench-dispatch: deps
	$(SWIFT) build -c release
	$(STACK) Deploy/local/bench-dispatch.sh

## Point-of-sale lookup latency through ingress and the key-vault: p50/p99 at 500 lookups/s.
bench-pos: deps
	$(SWIFT) build -c release
	$(STACK) Deploy/local/bench-pos.sh
