package main

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/aftercommit/aftercommit/donations"
)

// driftCounter is aftercommit_cache_drift_repairs_total: the counter caches the
// donations' reconciler found off their donations (and repaired), by table.
type driftCounter struct {
	vec *prometheus.CounterVec
}

func newDriftCounter() *driftCounter {
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "aftercommit_cache_drift_repairs_total",
		Help: "Counter caches the reconciliation job found off their source rows and repaired, by table.",
	}, []string{"table"})
	// Both series exist from the start, so a rate() of them is 0, not
	// absent, until a drift is found.
	vec.WithLabelValues("fundraisers")
	vec.WithLabelValues("users")
	return &driftCounter{vec: vec}
}

// observe is donations.ReconcileConfig.OnDrift.
func (c *driftCounter) observe(_ context.Context, d donations.Drift) {
	c.vec.WithLabelValues(d.Table).Inc()
}
