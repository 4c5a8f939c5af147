// Package app is the composition root of aftercommit's commands: the one
// place where every domain registers its queues, workers and periodic jobs,
// so that cmd/worker and cmd/aftercommit (check-args) see the same kinds.
package app

import (
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/aftercommit/aftercommit/donations"
	"github.com/aftercommit/aftercommit/inventory"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/reporting"
)

// Registry returns a registry holding every domain's registration. Workers
// keep pool for their work; a command that only inspects the registry
// (check-args) never runs them. Check reg.Err() before use.
func Registry(pool *pgxpool.Pool) *jobs.Registry {
	reg := jobs.NewRegistry()
	jobs.RegisterPing(reg, pool)
	jobs.RegisterEventPruner(reg, pool, nil)
	donations.Register(reg, pool)
	inventory.Register(reg, pool)
	reporting.Register(reg, pool)
	return reg
}
