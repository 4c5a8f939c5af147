// Package exampleapp wires a job registry into a working application on a
// schema of its own, as cmd/worker and an embedding application wire it, in
// one process: a client from jobs.NewClient working every queue with quick
// fetches, its outbox and relay, and the events of the completed jobs. It
// is the fixture of the runnable examples, which have no *testing.T: every
// failure ends the process with log.Fatal. Production code never imports
// it.
package exampleapp

import (
	"context"
	"log"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/outbox/relay"
)

// App is a registry's application on a schema of its own.
type App struct {
	Schema *dbtest.Schema
	Client *river.Client[pgx.Tx]
	Outbox *outbox.Outbox
	// Relay is not started: Drain moves what committed, Start runs it.
	Relay *relay.Relay
	// Completed receives the client's completed-job events once it runs.
	Completed <-chan *river.Event
}

// New creates a schema, fills a registry with register (which gets the
// schema's pool, for the workers) and wires the application. The client
// is not started: call Start. release stops everything and releases the
// schema.
func New(ctx context.Context, register func(reg *jobs.Registry, pool *pgxpool.Pool)) (app *App, release func()) {
	s, releaseSchema, err := dbtest.NewSchema(ctx, &dbtest.Opts{MaxConns: 8})
	if err != nil {
		log.Fatal(err)
	}
	reg := jobs.NewRegistry()
	register(reg, s.Pool)
	discard := slog.New(slog.DiscardHandler)
	client, err := jobs.NewClient(s.Pool, reg, &jobs.ClientConfig{
		Queues: []string{jobs.AllQueues},
		Schema: s.Name,
		Logger: discard,
		River:  &river.Config{FetchCooldown: 10 * time.Millisecond, FetchPollInterval: 50 * time.Millisecond},
	})
	if err != nil {
		log.Fatal(err)
	}
	completed, cancel := client.Subscribe(river.EventKindJobCompleted)
	ob, err := jobs.NewOutbox(s.Pool, client, reg, nil)
	if err != nil {
		log.Fatal(err)
	}
	rl, err := jobs.NewRelay(s.Pool, client, reg, &relay.Config{Schema: s.Name, Logger: discard})
	if err != nil {
		log.Fatal(err)
	}
	app = &App{Schema: s, Client: client, Outbox: ob, Relay: rl, Completed: completed}
	return app, func() {
		_ = client.Stop(ctx)
		cancel()
		releaseSchema()
	}
}

// Pool is the schema's pool.
func (a *App) Pool() *pgxpool.Pool { return a.Schema.Pool }

// Start starts the client, to work jobs.
func (a *App) Start(ctx context.Context) {
	if err := a.Client.Start(ctx); err != nil {
		log.Fatal(err)
	}
}

// Drain moves the committed outbox rows into River's job table, as the
// relay of every worker process does.
func (a *App) Drain(ctx context.Context) relay.MoveResult {
	moved, err := a.Relay.Drain(ctx)
	if err != nil {
		log.Fatal(err)
	}
	return moved
}

// WaitFor returns the completed event of the next job of kind, passing over
// the others.
func (a *App) WaitFor(kind string) *river.Event {
	for ev := range a.Completed {
		if ev.Job.Kind == kind {
			return ev
		}
	}
	return nil
}
