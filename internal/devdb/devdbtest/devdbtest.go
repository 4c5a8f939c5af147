// Package devdbtest stands in for Docker in the tests of the commands that
// fall back to a throw-away Postgres container (devdb.Config.Start), on
// machines without a Docker engine. Production code never imports it.
package devdbtest

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
)

// FakeDocker stands in for devdb.StartContainer: its Start hands out URL
// (or fails with Err) and it counts the containers started and removed.
type FakeDocker struct {
	// URL is the "container's" server, a real one the test owns.
	URL string
	// Err, when set, is what starting a container fails with.
	Err error
	// OnStart, when set, runs once a container is up.
	OnStart func()
	// Refuse, when set, makes starting a container fail that test: the
	// command must not start one.
	Refuse *testing.T

	started atomic.Int32
	removed atomic.Int32
}

// Start has the shape of devdb.Config.Start.
func (d *FakeDocker) Start(context.Context, *slog.Logger) (string, func(), error) {
	if d.Refuse != nil {
		d.Refuse.Error("a container was started")
	}
	d.started.Add(1)
	if d.Err != nil {
		return "", nil, d.Err
	}
	if d.OnStart != nil {
		d.OnStart()
	}
	return d.URL, func() { d.removed.Add(1) }, nil
}

// Started counts the containers started.
func (d *FakeDocker) Started() int { return int(d.started.Load()) }

// Removed counts the containers removed.
func (d *FakeDocker) Removed() int { return int(d.removed.Load()) }
