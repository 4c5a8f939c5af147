// Command embed is a small invoicing application that embeds aftercommit:
// its own pgxpool, its own table (invoices) and job kind
// (billing.send_invoice), an HTTP handler that writes an invoice and
// enqueues the job that sends it in one transaction, and a worker in the
// same process that works the application's jobs and every job of
// aftercommit's domains.
//
//	DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable go run ./examples/embed
//	curl -si -X POST 127.0.0.1:8080/invoices -d '{"customer": "Ada", "amount_cents": 1200}'
//	curl -s 127.0.0.1:8080/invoices/1
//
// At start it applies River's and aftercommit's migrations
// (aftercommit.Migrate) and creates its invoices table if missing. ADDR
// changes the address (default 127.0.0.1:8080). Ctrl-C stops it: the
// server, then the worker, which lets running jobs finish.
package main

import (
	"cmp"
	"context"
	"errors"
	"log"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/outbox/relay"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Getenv("DATABASE_URL"), cmp.Or(os.Getenv("ADDR"), "127.0.0.1:8080"))
	stop() // before log.Fatal, which would skip a deferred stop
	if err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, databaseURL, addr string) error {
	pool, err := pgxpool.New(ctx, cmp.Or(databaseURL, "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"))
	if err != nil {
		return err
	}
	defer pool.Close()

	app, err := newApp(ctx, pool, "", slog.Default())
	if err != nil {
		return err
	}
	// The worker: the application's queue and every queue of aftercommit.
	if err := app.start(ctx); err != nil {
		return err
	}
	defer func() { _ = app.stop(context.WithoutCancel(ctx)) }()

	srv := &http.Server{Addr: addr, Handler: app.routes(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Shutdown(context.WithoutCancel(ctx))
	}()
	log.Printf("embed: listening on http://%s", addr)
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// app is the application: its pool, its River client (which also works
// jobs) and the outbox its handlers enqueue through.
type app struct {
	pool   *pgxpool.Pool
	client *river.Client[pgx.Tx]
	ob     *outbox.Outbox
	relay  *relay.Relay
	logger *slog.Logger
}

// start starts the worker and the relay that moves the committed outbox
// rows into River's job table; stop stops them, the relay first.
func (a *app) start(ctx context.Context) error {
	if err := a.client.Start(ctx); err != nil {
		return err
	}
	return a.relay.Start(ctx)
}

func (a *app) stop(ctx context.Context) error {
	return errors.Join(a.relay.Stop(ctx), a.client.Stop(ctx))
}

// createInvoicesSQL is the application's own table, made after aftercommit's
// migrations (an application would keep it in its own migrations).
const createInvoicesSQL = `
CREATE TABLE IF NOT EXISTS invoices (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer     text   NOT NULL,
    amount_cents bigint NOT NULL CHECK (amount_cents > 0),
    sent_at      timestamptz
)`

// newApp migrates the database, creates the application's table and builds
// the River client and the outbox. schema is River's schema ("" for the
// pool's search_path); the caller starts and stops the client.
func newApp(ctx context.Context, pool *pgxpool.Pool, schema string, logger *slog.Logger) (*app, error) {
	if err := aftercommit.Migrate(ctx, pool, &aftercommit.MigrateOpts{Schema: schema}); err != nil {
		return nil, err
	}
	if _, err := pool.Exec(ctx, createInvoicesSQL); err != nil {
		return nil, err
	}

	// One registry: the application's own queue and kind, and every kind of
	// aftercommit (a process that may lead must know them all).
	reg := jobs.NewRegistry()
	billing := reg.AddQueue("billing", "default", jobs.WeightHigh, nil)
	jobs.AddWorker(reg, billing, &sendInvoiceWorker{pool: pool})
	aftercommit.Register(reg, pool, nil)

	client, err := jobs.NewClient(pool, reg, &jobs.ClientConfig{Queues: []string{jobs.AllQueues}, Schema: schema, Logger: logger})
	if err != nil {
		return nil, err
	}
	ob, err := jobs.NewOutbox(pool, client, reg, nil)
	if err != nil {
		return nil, err
	}
	rl, err := jobs.NewRelay(pool, client, reg, &relay.Config{Schema: schema, Logger: logger})
	if err != nil {
		return nil, err
	}
	return &app{pool: pool, client: client, ob: ob, relay: rl, logger: logger}, nil
}
