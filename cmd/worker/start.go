package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit"
	"github.com/aftercommit/aftercommit/internal/dbconn"
	"github.com/aftercommit/aftercommit/internal/devdb"
)

// How long a failed start is retried when the database went away between
// the worker's first connection and the River client's start (a restart,
// a failover, connections cut): the backoff doubles from minStartBackoff
// up to maxStartBackoff, for at most startRetryFor in all.
const (
	startRetryFor   = time.Minute
	minStartBackoff = 100 * time.Millisecond
	maxStartBackoff = 2 * time.Second
)

// startClient starts client, retrying while the failure is the database's
// connection going away (transient); any other failure is returned at once.
// It returns ctx's error when ctx ends first.
func startClient(ctx context.Context, client *river.Client[pgx.Tx], logger *slog.Logger, retryFor time.Duration) error {
	return retryTransient(ctx, logger, "the River client started", retryFor, func() error {
		// The signal must not reach River through Start's context:
		// cancelling it would cancel running jobs at once.
		return client.Start(context.WithoutCancel(ctx))
	})
}

// retryTransient runs fn until it succeeds, fails for a reason that is not
// transient, or retryFor has passed, waiting between tries with a backoff
// from minStartBackoff doubling up to maxStartBackoff. while names what fn
// does in the log line of a retry. It returns ctx's error when ctx ends
// while it waits.
func retryTransient(ctx context.Context, logger *slog.Logger, while string, retryFor time.Duration, fn func() error) error {
	deadline := time.Now().Add(retryFor)
	backoff := minStartBackoff
	for {
		err := fn()
		if err == nil || !transient(err) || time.Now().Add(backoff).After(deadline) {
			return err
		}
		logger.WarnContext(ctx, "worker: the database went away while "+while+"; retrying",
			slog.String("err", err.Error()), slog.Duration("in", backoff))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxStartBackoff)
	}
}

// transient reports whether err is a lost or refused connection, or the
// server shutting down or not yet accepting connections: what a retry
// after a moment can cure. A wrong password, a missing table or a bad
// configuration is not.
func transient(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		// Class 08 (connection exception); 57P01 admin shutdown (a
		// terminated backend), 57P02 crash shutdown, 57P03 cannot connect
		// now (starting up, shutting down).
		return strings.HasPrefix(pgErr.Code, "08") || pgErr.Code == "57P01" || pgErr.Code == "57P02" || pgErr.Code == "57P03"
	}
	var netErr net.Error
	var connectErr *pgconn.ConnectError
	return errors.As(err, &netErr) || errors.As(err, &connectErr) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || pgconn.SafeToRetry(err)
}

// setUpDev prepares the database of a --dev run; without --dev it does
// nothing. When neither --database-url nor DATABASE_URL named a database,
// the worker runs on the server devdb finds: the default URL when a server
// answers there, else a postgres:16 container, which the returned stop
// removes (run defers it, so a signal removes it too). Then it applies the
// migrations, which a worker never does otherwise. When it cannot, it has
// logged why and returns ok false with the exit code.
func setUpDev(ctx context.Context, cfg *config, logger *slog.Logger) (stop func(), code int, ok bool) {
	stop = func() {}
	if !cfg.dev {
		return stop, exitOK, true
	}
	if !cfg.urlGiven {
		find := devdb.Config{}
		if cfg.devFind != nil {
			find = *cfg.devFind
		}
		find.DefaultURL = cmp.Or(find.DefaultURL, databaseURLDefault)
		find.Logger = cmp.Or(find.Logger, logger)
		db, err := devdb.Find(ctx, &find)
		if err != nil {
			if ctx.Err() != nil {
				logger.InfoContext(ctx, "worker: interrupted before start")
				return stop, exitOK, false
			}
			logger.ErrorContext(ctx, "worker: "+err.Error())
			return stop, exitFailure, false
		}
		stop = db.Close
		if note := db.Note(); note != "" {
			logger.InfoContext(ctx, "worker: "+note)
		}
		pool, err := parsePoolConfig(db.URL, "the --dev database")
		if err != nil {
			stop()
			logger.ErrorContext(ctx, err.Error())
			return func() {}, exitFailure, false
		}
		dbconn.SetSchema(pool, cfg.schema)
		cfg.pool = pool
	}

	pool, err := dbconn.Connect(ctx, cfg.pool.Copy(), "worker")
	if err == nil {
		err = aftercommit.Migrate(ctx, pool, &aftercommit.MigrateOpts{Schema: cfg.schema})
		if err != nil {
			err = fmt.Errorf("worker: --dev: %w", err)
		}
		pool.Close()
	}
	switch {
	case ctx.Err() != nil:
		stop()
		logger.InfoContext(ctx, "worker: interrupted before start")
		return func() {}, exitOK, false
	case err != nil:
		stop()
		logger.ErrorContext(ctx, dbconn.OneLine(err.Error()))
		return func() {}, exitFailure, false
	}
	logger.InfoContext(ctx, "worker: --dev: the database is migrated")
	return stop, exitOK, true
}
