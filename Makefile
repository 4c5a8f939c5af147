# aftercommit — common tasks. `make help` lists them.

BENCH_ROUNDS ?= 6
BENCH_TIME   ?= 2s

# golangci-lint, pinned: .ci/run installs and runs the same version (it
# checks that this line names it). Each version goes into a directory of
# its own; go install finds it up to date on later runs.
GOLANGCI_LINT_VERSION := v2.15.0
GOLANGCI_LINT_BIN     := $(or $(TMPDIR),/tmp)/aftercommit-golangci-lint-$(GOLANGCI_LINT_VERSION)

.PHONY: help generate test test/race lint migrate worker bench/outbox bench/jobs bench/donations bench/inventory bench/reporting bench/pgbench-floor bench/claims-floor compose/check bench

help: ## list targets
	@grep -E '^[a-zA-Z/_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "%-16s %s\n", $$1, $$2}'

test: ## run the tests (needs Postgres; see README)
	go test -race ./...

test/race: test ## same as test

generate: ## regenerate River's migrations in migrations/ after changing River's version in go.mod
	go generate ./migrations

lint: ## gofmt, then golangci-lint (.golangci.yml: go vet's analyzers and more, build tags long and faults included), as CI runs them
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); exit 1)
	GOBIN=$(GOLANGCI_LINT_BIN) go install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	$(GOLANGCI_LINT_BIN)/golangci-lint run ./...

migrate: ## apply River's and aftercommit's migrations to DATABASE_URL
	go run ./cmd/aftercommit migrate up

worker: ## start a worker on DATABASE_URL
	go run ./cmd/worker

bench/outbox: ## outbox transaction cost, rounds alternated, medians and ratios
	@for i in $$(seq $(BENCH_ROUNDS)); do go test -run '^$$' -bench . -benchtime $(BENCH_TIME) -count 1 ./outbox; done | go run ./internal/benchratio

compose/check: ## validate docker-compose.yml without a Docker engine
	docker-compose -f docker-compose.yml config -q

bench/jobs: ## worker throughput, full middleware stack vs bare River, rounds alternated
	@for i in $$(seq $(BENCH_ROUNDS)); do go test -run '^$$' -bench WorkerThroughput -benchtime 20000x -count 1 ./jobs; done | go run ./internal/benchratio

bench/donations: ## Donate vs a plain insert; TrackOpen coalesced vs job-per-event
	@for i in $$(seq $(BENCH_ROUNDS)); do go test -run '^$$' -bench 'BenchmarkDonate|BenchmarkTrackOpen' -benchtime 2000x -count 1 ./donations; done | go run ./internal/benchratio

bench/pgbench-floor: ## what one river_job row costs Postgres alone (pgbench, same round trips)
	@bash internal/bench/pgbench/floor.sh

bench/inventory: ## claims/s on one hot product: single-row lock vs 8 and 32 buckets, at 1, 8, 32 buyers
	@for i in $$(seq $(BENCH_ROUNDS)); do go test -run '^$$' -bench BenchmarkClaims -benchtime 3000x -count 1 ./inventory; done | go run ./internal/benchratio

bench/claims-floor: ## the claim transactions' SQL alone (pgbench, 32 clients): single-row vs 32 buckets
	@bash internal/bench/pgbench/claims_floor.sh

bench/reporting: ## 10,000 car users: the bulk job vs the after_commit way (a row and a report enqueue per user)
	@for i in 1 2 3; do go test -run '^$$' -bench 'BenchmarkCarUsersInBulk/^users=10000$$/' -benchtime 3x -count 1 ./reporting; done | go run ./internal/benchratio

bench: ## every aftercommit bench scenario side by side (about 10–15 min here), the growth chart into docs/
	go run ./cmd/aftercommit bench --rounds 3 --duration 4s --chart docs/growth.png
