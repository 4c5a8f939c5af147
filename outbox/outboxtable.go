package outbox

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/aftercommit/aftercommit/outbox/internal/outboxrow"
)

// How jobs reach River
//
// By default a transaction's jobs are one INSERT into the outbox table,
// outbox_jobs: the kind, the args and only the options the caller chose.
// The INSERT is sent with the COMMIT in one round trip. It touches no row
// another writer needs and its table has a single index, so it costs little
// more than the business rows themselves. A relay (package outbox/relay,
// run by every cmd/worker) then moves committed rows into river_job. With
// Config.DirectInsert the jobs are written by River's insert into river_job
// instead, as before the outbox table existed.

// Outbox inserts: the lean one when no job of the flush has an option, the
// full one otherwise. Args travel as text and are cast, so pgx never
// re-encodes them.
const (
	outboxInsertOneSQL  = `INSERT INTO outbox_jobs (kind, args) VALUES ($1, $2::text::jsonb)`
	outboxInsertLeanSQL = `INSERT INTO outbox_jobs (kind, args)
SELECT k, a::jsonb FROM unnest($1::text[], $2::text[]) AS r (k, a)`
	outboxInsertFullSQL = `INSERT INTO outbox_jobs (kind, args, queue, priority, max_attempts, scheduled_at, metadata, options)
SELECT k, a::jsonb, q, p, m, s, md::jsonb, op::jsonb
  FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::int[], $6::timestamptz[], $7::text[], $8::text[])
       AS r (k, a, q, p, m, s, md, op)`
	// The relays' channel is per schema, as River's are.
	outboxNotifySQL = `SELECT pg_notify(current_schema() || '.` + outboxrow.Channel + `', '')`
)

// RelayNotifyIntervalDefault is the default of Config.RelayNotifyInterval.
const RelayNotifyIntervalDefault = 10 * time.Millisecond

// outboxInsert is the statement that writes jobs to the outbox table.
func outboxInsert(jobs []pendingJob) recordedStmt {
	full := false
	for i := range jobs {
		if !jobs[i].cols.IsZero() {
			full = true
			break
		}
	}
	if !full && len(jobs) == 1 {
		return recordedStmt{sql: outboxInsertOneSQL, args: []any{jobs[0].kind, jobs[0].encoded}, outbox: true}
	}
	kinds := make([]string, len(jobs))
	args := make([]string, len(jobs))
	for i, j := range jobs {
		kinds[i], args[i] = j.kind, j.encoded
	}
	if !full {
		return recordedStmt{sql: outboxInsertLeanSQL, args: []any{kinds, args}, outbox: true}
	}
	queues := make([]*string, len(jobs))
	priorities := make([]*int32, len(jobs))
	attempts := make([]*int32, len(jobs))
	scheduled := make([]*time.Time, len(jobs))
	metadata := make([]*string, len(jobs))
	options := make([]*string, len(jobs))
	for i, j := range jobs {
		c := j.cols
		queues[i], priorities[i], attempts[i], scheduled[i] = c.Queue, c.Priority, c.MaxAttempts, c.ScheduledAt
		metadata[i], options[i] = textOrNil(c.Metadata), textOrNil(c.Options)
	}
	return recordedStmt{
		sql:    outboxInsertFullSQL,
		args:   []any{kinds, args, queues, priorities, attempts, scheduled, metadata, options},
		outbox: true,
	}
}

func textOrNil(b []byte) *string {
	if b == nil {
		return nil
	}
	s := string(b)
	return &s
}

// notifyDue reports whether this flush should wake the relays: at most once
// per Config.RelayNotifyInterval per Outbox. A NOTIFY takes a cluster-wide
// lock at COMMIT, so one in every transaction would serialize the writers;
// between notifications the relays' adaptive poll finds the rows.
func (o *Outbox) notifyDue() bool {
	interval := o.cfg.RelayNotifyInterval
	if interval < 0 {
		return false
	}
	now := time.Now().UnixNano()
	last := o.lastNotify.Load()
	if now-last < int64(interval) {
		return false
	}
	return o.lastNotify.CompareAndSwap(last, now)
}

// writeOutbox writes the events (stmts, when any) and the jobs into the
// outbox table, and commits when commit is set: one round trip.
func (o *Outbox) writeOutbox(ctx context.Context, tx pgx.Tx, jobs []pendingJob, stmts []recordedStmt, events int, commit bool) (FlushResult, error) {
	if len(jobs) > 0 {
		stmts = append(stmts, outboxInsert(jobs))
		if o.notifyDue() {
			stmts = append(stmts, recordedStmt{sql: outboxNotifySQL, notify: true})
		}
		if commit && o.cfg.DisablePipelinedCommit {
			o.fallbacks.Add(1)
		} else {
			o.pipelined.Add(1)
		}
	}
	if commit && o.cfg.DisablePipelinedCommit {
		inserted, _, err := sendBatch(ctx, tx, stmts, false)
		if err != nil {
			return FlushResult{}, err
		}
		if err := tx.Commit(ctx); err != nil {
			return FlushResult{}, commitError(fmt.Errorf("outbox: committing: %w", err), true)
		}
		return FlushResult{Events: events, Inserted: inserted, RoundTrips: 2}, nil
	}
	inserted, _, err := sendBatch(ctx, tx, stmts, commit)
	if err != nil {
		return FlushResult{}, err
	}
	return FlushResult{Events: events, Inserted: inserted, RoundTrips: 1}, nil
}
