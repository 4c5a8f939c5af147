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
	return RegistryConfig(pool, nil)
}

// Config tunes the domains' registrations. A nil *Config takes every
// domain's defaults.
type Config struct {
	// Inventory is the inventory domain's configuration (nil: defaults).
	Inventory *inventory.Config
}

// RegistryConfig is Registry with a Config. It panics when a domain's
// configuration is out of range (inventory.RegisterConfig), a programming
// error found at startup.
func RegistryConfig(pool *pgxpool.Pool, cfg *Config) *jobs.Registry {
	if cfg == nil {
		cfg = &Config{}
	}
	reg := jobs.NewRegistry()
	jobs.RegisterPing(reg, pool)
	jobs.RegisterEventPruner(reg, pool, nil)
	donations.Register(reg, pool)
	inventory.RegisterConfig(reg, pool, cfg.Inventory)
	reporting.Register(reg, pool)
	return reg
}
