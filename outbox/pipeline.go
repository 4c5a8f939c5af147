package outbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/aftercommit/aftercommit/internal/riverseam"
)

// How the pipelined commit works
//
// River builds the job insert (defaults, unique keys, state, notification
// payloads) inside Client.InsertManyTx and runs it through the pgx.Tx it is
// given. write gives it a recorder instead of the real transaction:
// the recorder keeps River's INSERT and NOTIFY statements with their
// arguments without running them. They are then sent, after the insert of
// the transaction's events and followed by COMMIT, as one pgx batch: one
// network round trip where River's path plus a commit takes two. Because River itself wrote the statements, its semantics are
// kept exactly.
//
// The recorder only accepts the statements it knows (River's job insert and
// notify, and River's read of the server version, which it passes through).
// Anything else — a client hook or middleware that runs SQL of its own, or a
// River release that changes its insert path — makes the recorder refuse,
// and the jobs are inserted the ordinary way (InsertManyTx on the real
// transaction, then COMMIT). Slower, never wrong.

// Statement names that River's sqlc queries start with: River internals,
// watched by internal/riverseam's upgrade canary.
const (
	riverInsertPrefix   = riverseam.InsertFastManyPrefix
	riverNotifyPrefix   = riverseam.NotifyManyPrefix
	riverVersionPrefix  = riverseam.ProductVersionPrefix
	commitStatementText = "COMMIT"
)

var errNotRecordable = errors.New("outbox: statement cannot be pipelined")

// write writes events and jobs in tx and, when commit is set, commits it. It
// sends everything in one round trip when River's insert can be recorded;
// otherwise it runs the statements one by one. It never rolls back: on error
// the caller does (InTx), or owns the transaction (Batch.Flush).
func (o *Outbox) write(ctx context.Context, tx pgx.Tx, jobs []pendingJob, events []pendingEvent, jobBatches []*pendingJobBatch, commit bool) (FlushResult, error) {
	res, err := o.writeAll(ctx, tx, jobs, events, jobBatches, commit)
	if err != nil {
		return FlushResult{}, jobBatchError(err)
	}
	res.JobBatches = len(jobBatches)
	return res, nil
}

// writeAll is write, its errors unmapped.
func (o *Outbox) writeAll(ctx context.Context, tx pgx.Tx, jobs []pendingJob, events []pendingEvent, jobBatches []*pendingJobBatch, commit bool) (FlushResult, error) {
	var stmts []recordedStmt
	if len(events) > 0 {
		stmts = append(stmts, eventsInsert(events))
	}
	if len(jobBatches) > 0 {
		stmts = append(stmts, jobBatchesAdd(jobBatches))
	}
	if !o.cfg.DirectInsert {
		return o.writeOutbox(ctx, tx, jobs, stmts, len(events), commit)
	}
	params := make([]river.InsertManyParams, len(jobs))
	for i, j := range jobs {
		params[i] = river.InsertManyParams{Args: j.args, InsertOpts: o.withKindDefaults(j.kind, j.opts)}
	}

	if o.copySafe(params) {
		return o.writeCopy(ctx, tx, params, stmts, len(events), commit)
	}

	pipelined := len(params) == 0
	if len(params) > 0 && !o.cfg.DisablePipelinedCommit {
		rec := &recorder{real: tx}
		_, err := o.client.InsertManyTx(ctx, rec, params)
		switch {
		case err == nil && rec.refused == nil && rec.hasInsert:
			stmts = append(stmts, rec.stmts...)
			pipelined = true
		case err != nil && rec.refused == nil:
			// River refused the jobs before any statement (bad options,
			// unknown kind): nothing was sent.
			return FlushResult{}, fmt.Errorf("outbox: inserting %d jobs: %w", len(params), err)
		default:
			o.cfg.Logger.WarnContext(ctx, "outbox: job insert cannot be pipelined; using one round trip per statement",
				slog.Any("err", rec.refused))
		}
	}

	if pipelined {
		if len(params) > 0 {
			o.pipelined.Add(1)
		}
		inserted, skipped, err := sendBatch(ctx, tx, stmts, commit)
		if err != nil {
			return FlushResult{}, err
		}
		return FlushResult{Events: len(events), Inserted: inserted, UniqueSkipped: skipped, RoundTrips: 1}, nil
	}

	o.fallbacks.Add(1)
	res := FlushResult{Events: len(events)}
	n, err := execEach(ctx, tx, stmts)
	if err != nil {
		return FlushResult{}, err
	}
	res.RoundTrips += n
	results, err := o.client.InsertManyTx(ctx, tx, params)
	if err != nil {
		return FlushResult{}, fmt.Errorf("outbox: inserting %d jobs: %w", len(params), err)
	}
	counted := countResults(results)
	res.Inserted, res.UniqueSkipped = counted.Inserted, counted.UniqueSkipped
	res.RoundTrips++
	if commit {
		if err := tx.Commit(ctx); err != nil {
			return FlushResult{}, commitError(fmt.Errorf("outbox: committing: %w", err), true)
		}
		res.RoundTrips++
	}
	return res, nil
}

// copySafe reports whether params are many enough for COPY and none of them
// can meet an existing job: COPY has no ON CONFLICT, so a unique job (River
// unique options, or a queue lock's de-duplication key) must go through the
// INSERT that skips it.
func (o *Outbox) copySafe(params []river.InsertManyParams) bool {
	if o.cfg.CopyMinJobs < 0 || len(params) < o.cfg.CopyMinJobs {
		return false
	}
	for _, p := range params {
		if p.InsertOpts != nil && !reflect.ValueOf(p.InsertOpts.UniqueOpts).IsZero() {
			return false
		}
		if a, ok := p.Args.(river.JobArgsWithInsertOpts); ok && !reflect.ValueOf(a.InsertOpts().UniqueOpts).IsZero() {
			return false
		}
		if o.dedupeKey != nil {
			if _, ok := o.dedupeKey(p.Args); ok {
				return false
			}
		}
	}
	return true
}

// writeCopy runs stmts (the events' and job batches' statements), then
// writes the jobs with River's COPY, then commits when commit is set.
func (o *Outbox) writeCopy(ctx context.Context, tx pgx.Tx, params []river.InsertManyParams, stmts []recordedStmt, events int, commit bool) (FlushResult, error) {
	o.copied.Add(1)
	res := FlushResult{Events: events}
	n, err := execEach(ctx, tx, stmts)
	if err != nil {
		return FlushResult{}, err
	}
	res.RoundTrips += n
	n, err = o.client.InsertManyFastTx(ctx, tx, params)
	if err != nil {
		return FlushResult{}, fmt.Errorf("outbox: inserting %d jobs with COPY: %w", len(params), err)
	}
	res.Inserted = n
	res.RoundTrips++
	if commit {
		if err := tx.Commit(ctx); err != nil {
			return FlushResult{}, commitError(fmt.Errorf("outbox: committing: %w", err), true)
		}
		res.RoundTrips++
	}
	return res, nil
}

// execEach runs stmts one by one, a round trip each, and returns how many
// it ran.
func execEach(ctx context.Context, tx pgx.Tx, stmts []recordedStmt) (int, error) {
	for i, s := range stmts {
		if _, err := tx.Exec(ctx, s.sql, s.args...); err != nil {
			return i, fmt.Errorf("outbox: %s: %w", s.what(), err)
		}
	}
	return len(stmts), nil
}

// countResults counts River's insert results.
func countResults(results []*rivertype.JobInsertResult) FlushResult {
	var res FlushResult
	for _, r := range results {
		if r.UniqueSkippedAsDuplicate {
			res.UniqueSkipped++
		} else {
			res.Inserted++
		}
	}
	return res
}

// skippedColumn is the column of River's insert that tells a new row from
// an existing one matched by its unique key.
const skippedColumn = "unique_skipped_as_duplicate"

// countRows counts the rows River's insert returned, new and matched.
func countRows(rows pgx.Rows) (inserted, skipped int, err error) {
	col := -1
	for i, fd := range rows.FieldDescriptions() {
		if fd.Name == skippedColumn {
			col = i
		}
	}
	for rows.Next() {
		var isSkipped bool
		if col >= 0 {
			// A bool is one byte in both formats: 1/0 in binary, 't'/'f'
			// in text. Reading it raw spares decoding the whole job row.
			if raw := rows.RawValues()[col]; len(raw) == 1 {
				isSkipped = raw[0] == 1 || raw[0] == 't'
			}
		}
		if isSkipped {
			skipped++
		} else {
			inserted++
		}
	}
	return inserted, skipped, rows.Err()
}

// sendBatch sends stmts, and COMMIT when commit is set, in one batch. With
// commit, a nil error means the transaction committed with every statement
// applied; an error means nothing was committed, except an error matching
// ErrCommitInDoubt (the answer was lost after the batch was sent: as with
// any COMMIT, the outcome is unknown). The caller must not end the transaction again after a COMMIT
// went out: pgx's Tx does not know the server ended it.
func sendBatch(ctx context.Context, tx pgx.Tx, stmts []recordedStmt, commit bool) (inserted, skipped int, err error) {
	batch := &pgx.Batch{}
	for _, s := range stmts {
		batch.Queue(s.sql, s.args...)
	}
	if commit {
		batch.Queue(commitStatementText)
	}

	// With commit, every error below is met after the COMMIT went out in
	// the same batch: commitError decides whether its outcome is known.
	inDoubt := func(err error, duringCommit bool) error {
		if commit {
			return commitError(err, duringCommit)
		}
		return err
	}
	br := tx.SendBatch(ctx, batch)
	for i := 0; i < len(stmts) && err == nil; i++ {
		if !stmts[i].insert {
			tag, execErr := br.Exec()
			if execErr != nil {
				err = inDoubt(fmt.Errorf("outbox: %s: %w", stmts[i].what(), execErr), false)
			}
			if stmts[i].outbox {
				inserted += int(tag.RowsAffected())
			}
			continue
		}
		rows, queryErr := br.Query()
		if queryErr != nil {
			err = inDoubt(fmt.Errorf("outbox: inserting jobs: %w", queryErr), false)
			continue
		}
		n, k, countErr := countRows(rows)
		rows.Close()
		if countErr != nil {
			err = inDoubt(fmt.Errorf("outbox: inserting jobs: %w", countErr), false)
		}
		inserted, skipped = inserted+n, skipped+k
	}
	var tag pgconn.CommandTag
	if err == nil && commit {
		var commitErr error
		tag, commitErr = br.Exec()
		if commitErr != nil {
			err = commitError(fmt.Errorf("outbox: committing: %w", commitErr), true)
		}
	}
	if closeErr := br.Close(); closeErr != nil && err == nil {
		err = inDoubt(fmt.Errorf("outbox: committing: %w", closeErr), commit)
	}
	if err != nil {
		return 0, 0, err
	}
	if commit && tag.String() != commitStatementText {
		// COMMIT of a transaction that had failed answers ROLLBACK.
		return 0, 0, fmt.Errorf("outbox: committing: %w", pgx.ErrTxCommitRollback)
	}
	return inserted, skipped, nil
}

type recordedStmt struct {
	sql    string
	args   []any
	insert bool // River's job insert, whose rows are counted
	outbox bool // the outbox table's insert, whose rows are counted
	notify bool // the relays' wake-up
}

func (s recordedStmt) what() string {
	switch {
	case s.sql == eventsInsertSQL:
		return "inserting events"
	case s.sql == jobBatchAddSQL:
		return "recording job batches"
	case s.outbox:
		return "inserting jobs into the outbox"
	case s.notify:
		return "notifying the relays"
	}
	return "inserting jobs"
}

// recorder is the pgx.Tx that River's InsertManyTx writes to during a
// pipelined commit. See "How the pipelined commit works".
type recorder struct {
	real      pgx.Tx
	stmts     []recordedStmt
	hasInsert bool
	refused   error
}

func (r *recorder) refuse(what string) error {
	if r.refused == nil {
		r.refused = fmt.Errorf("%w: River called %s", errNotRecordable, what)
	}
	return r.refused
}

func (r *recorder) Query(_ context.Context, sql string, args ...any) (pgx.Rows, error) {
	if !strings.HasPrefix(sql, riverInsertPrefix) {
		return nil, r.refuse("Query " + firstLine(sql))
	}
	r.hasInsert = true
	r.stmts = append(r.stmts, recordedStmt{sql: sql, args: args, insert: true})
	return &emptyRows{typeMap: r.real.Conn().TypeMap()}, nil
}

func (r *recorder) Exec(_ context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if !strings.HasPrefix(sql, riverNotifyPrefix) {
		return pgconn.CommandTag{}, r.refuse("Exec " + firstLine(sql))
	}
	r.stmts = append(r.stmts, recordedStmt{sql: sql, args: args})
	return pgconn.NewCommandTag("SELECT 1"), nil
}

// QueryRow passes River's one-time read of the server version through; it
// changes nothing.
func (r *recorder) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if !strings.HasPrefix(sql, riverVersionPrefix) {
		return errRow{err: r.refuse("QueryRow " + firstLine(sql))}
	}
	return r.real.QueryRow(ctx, sql, args...)
}

func (r *recorder) Begin(context.Context) (pgx.Tx, error) { return nil, r.refuse("Begin") }
func (r *recorder) Commit(context.Context) error          { return r.refuse("Commit") }
func (r *recorder) Rollback(context.Context) error        { return r.refuse("Rollback") }
func (r *recorder) CopyFrom(context.Context, pgx.Identifier, []string, pgx.CopyFromSource) (int64, error) {
	return 0, r.refuse("CopyFrom")
}

func (r *recorder) SendBatch(_ context.Context, b *pgx.Batch) pgx.BatchResults {
	return pgx.FailedBatchResults(b, r.refuse("SendBatch"))
}

func (r *recorder) LargeObjects() pgx.LargeObjects {
	_ = r.refuse("LargeObjects")
	return pgx.LargeObjects{}
}

func (r *recorder) Prepare(context.Context, string, string) (*pgconn.StatementDescription, error) {
	return nil, r.refuse("Prepare")
}

// Conn lets River's driver read the connection's settings (query exec mode).
func (r *recorder) Conn() *pgx.Conn { return r.real.Conn() }

func firstLine(sql string) string {
	if i := strings.IndexByte(sql, '\n'); i >= 0 {
		sql = sql[:i]
	}
	if len(sql) > 80 {
		sql = sql[:80]
	}
	return sql
}

// emptyRows stands for the rows of a recorded query: River gets no results
// back from the recorder and does not need any.
type emptyRows struct{ typeMap *pgtype.Map }

func (*emptyRows) Close()                                       {}
func (*emptyRows) Err() error                                   { return nil }
func (*emptyRows) CommandTag() pgconn.CommandTag                { return pgconn.CommandTag{} }
func (*emptyRows) FieldDescriptions() []pgconn.FieldDescription { return nil }
func (*emptyRows) Next() bool                                   { return false }
func (*emptyRows) Scan(...any) error                            { return errors.New("outbox: no rows") }
func (*emptyRows) Values() ([]any, error)                       { return nil, nil }
func (*emptyRows) RawValues() [][]byte                          { return nil }
func (*emptyRows) Conn() *pgx.Conn                              { return nil }
func (r *emptyRows) TypeMap() *pgtype.Map                       { return r.typeMap }
