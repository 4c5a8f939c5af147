package main

import (
	"log/slog"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/jobs"
)

// faultHooks is nil in every build but the fault suite's (go build -tags
// faults, see faults.go): there it returns the registry the worker runs,
// with test hooks that slow, hold or end jobs as the environment asks, and
// may add middleware to rc.
var faultHooks func(pool *pgxpool.Pool, rc *river.Config, logger *slog.Logger) *jobs.Registry
