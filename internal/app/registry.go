// Package app is the shorthand of aftercommit's own commands and test beds
// for a registry holding every kind aftercommit ships. It adds nothing to
// aftercommit.Register, the public front door an embedding application
// calls: cmd/worker, cmd/aftercommit and the embedder register the very same
// set.
package app

import (
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/aftercommit/aftercommit"
	"github.com/aftercommit/aftercommit/jobs"
)

// Config is aftercommit.Config: a nil *Config takes every default.
type Config = aftercommit.Config

// Registry returns a new registry filled by aftercommit.Register with cfg
// (nil: the defaults). Workers keep pool for their work; a command that only
// inspects the registry (check-args) never runs them. Check reg.Err() before
// use. It panics when a domain's configuration is out of range (see
// aftercommit.Register).
func Registry(pool *pgxpool.Pool, cfg *Config) *jobs.Registry {
	reg := jobs.NewRegistry()
	aftercommit.Register(reg, pool, cfg)
	return reg
}
