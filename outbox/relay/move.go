package relay

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/aftercommit/aftercommit/outbox/internal/outboxrow"
)

type statements struct {
	take, dead string
}

func newStatements(schema string) statements {
	table, deadTable := outboxrow.Table, outboxrow.DeadTable
	if schema != "" {
		table = pgx.Identifier{schema, table}.Sanitize()
		deadTable = pgx.Identifier{schema, deadTable}.Sanitize()
	}
	return statements{
		// Oldest first; rows another relay holds are skipped, not waited
		// for; uncommitted rows are invisible.
		// $2 is the scan floor (scanFloor): 0 scans from the head.
		// = ANY (ARRAY(…)) makes the planner look ids up by the primary
		// key; IN (SELECT …) was planned as a hash semi join over a
		// sequential scan of the whole table, every batch: a backlog
		// drained in quadratic time.
		take: `DELETE FROM ` + table + ` WHERE id = ANY (ARRAY(
    SELECT id FROM ` + table + ` WHERE id > $2 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED))
RETURNING id, kind, args::text, queue, priority, max_attempts, scheduled_at,
          metadata::text, options::text, tx_id::text, created_at`,
		dead: `INSERT INTO ` + deadTable + ` (id, kind, args, queue, priority, max_attempts, scheduled_at, metadata, options, tx_id, created_at, reason)
SELECT id, kind, args::jsonb, queue, priority, max_attempts, scheduled_at, metadata::jsonb, options::jsonb, tx_id::xid8, created_at, reason
  FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::int[], $6::int[], $7::timestamptz[],
              $8::text[], $9::text[], $10::text[], $11::timestamptz[], $12::text[])
       AS d (id, kind, args, queue, priority, max_attempts, scheduled_at, metadata, options, tx_id, created_at, reason)`,
	}
}

// row is one outbox_jobs row as taken.
type row struct {
	id        int64
	kind      string
	args      string
	opts      outboxrow.Opts
	metadata  *string
	options   *string
	txID      string
	createdAt time.Time
}

func scanRows(rows pgx.Rows) ([]row, error) {
	defer rows.Close()
	var out []row
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.id, &r.kind, &r.args, &r.opts.Queue, &r.opts.Priority, &r.opts.MaxAttempts,
			&r.opts.ScheduledAt, &r.metadata, &r.options, &r.txID, &r.createdAt); err != nil {
			return nil, err
		}
		if r.metadata != nil {
			r.opts.Metadata = []byte(*r.metadata)
		}
		if r.options != nil {
			r.opts.Options = []byte(*r.options)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	// DELETE … RETURNING has no order: oldest first, for the coalescing
	// (the first row of a key wins) and for River's ids.
	slices.SortFunc(out, func(a, b row) int { return cmp.Compare(a.id, b.id) })
	return out, nil
}

// Args is what the relay hands River for one row: the row's JSON, inserted
// as written (fields a newer producer added survive an older relay), with
// the kind and, when Config.Decode is set, the decoded args behind it.
type Args struct {
	kind      string
	raw       []byte
	decoded   river.JobArgs
	createdAt time.Time
	row       row // the row it came from, for a dead row in careful mode
}

// Kind implements river.JobArgs.
func (a *Args) Kind() string { return a.kind }

// MarshalJSON returns the row's args.
func (a *Args) MarshalJSON() ([]byte, error) { return a.raw, nil }

// InsertOpts returns the decoded args' own InsertOpts, if any, so River
// applies them as it would to the Go type.
func (a *Args) InsertOpts() river.InsertOpts {
	if o, ok := a.decoded.(river.JobArgsWithInsertOpts); ok {
		return o.InsertOpts()
	}
	return river.InsertOpts{}
}

// Unwrap returns the decoded args (nil without Config.Decode): insert
// middleware that needs the Go type (the queue lock's key) looks through
// Args with it.
func (a *Args) Unwrap() river.JobArgs { return a.decoded }

// OutboxCreatedAt is when the row's transaction began: the job's
// created_at, so queue latency counts the time spent in the outbox.
func (a *Args) OutboxCreatedAt() time.Time { return a.createdAt }

var _ river.JobArgsWithInsertOpts = (*Args)(nil)

// plan is a batch's rows sorted by how they are inserted.
type plan struct {
	plain     []river.InsertManyParams // no uniqueness: COPY or one INSERT
	locked    []lockedParams           // a queue-lock key: one unique INSERT, in key order
	unique    []river.InsertManyParams // River's UniqueOpts: one INSERT each
	sequenced []seqParams              // in a sequence: one INSERT, oldest first
	dead      []deadRow
	coalesced int
}

type lockedParams struct {
	key    string
	params river.InsertManyParams
}

type deadRow struct {
	row    row
	reason string
}

// prepared is how one row is inserted, or why it is dead.
type prepared struct {
	params  river.InsertManyParams
	lockKey string
	hasLock bool
	unique  bool
	seq     *Sequence
	reason  string
}

func deadBecause(reason string) prepared { return prepared{reason: reason} }

// prepare judges one row: the params River inserts, its lock key or
// sequence, or the reason it is dead.
func (r *Relay) prepare(rw row) prepared {
	if len(rw.args) > r.cfg.MaxPayloadBytes {
		// args::text is jsonb's text form, with a space after every ':'
		// and ','; the writer measured compact JSON: measure the same.
		size := len(rw.args)
		var compact bytes.Buffer
		if err := json.Compact(&compact, []byte(rw.args)); err == nil {
			size = compact.Len()
		}
		if size > r.cfg.MaxPayloadBytes {
			return deadBecause(fmt.Sprintf("args of %d bytes exceed the payload limit of %d bytes", size, r.cfg.MaxPayloadBytes))
		}
	}
	if rw.kind == "" {
		return deadBecause("empty kind")
	}
	a := &Args{kind: rw.kind, raw: []byte(rw.args), createdAt: rw.createdAt, row: rw}
	if r.cfg.Decode != nil {
		decoded, err := r.cfg.Decode(rw.kind, a.raw)
		if err != nil {
			return deadBecause(err.Error())
		}
		a.decoded = decoded
	}
	opts, err := rw.opts.InsertOpts(outboxrow.ValidQueueName)
	if err != nil {
		return deadBecause(err.Error())
	}
	if r.cfg.KindDefaults != nil && (opts.Queue == "" || opts.Priority == 0) {
		if q, p, ok := r.cfg.KindDefaults(rw.kind); ok {
			if opts.Queue == "" {
				opts.Queue = q
			}
			if opts.Priority == 0 {
				opts.Priority = p
			}
		}
	}
	if r.queues != nil {
		queue := cmp.Or(opts.Queue, a.InsertOpts().Queue, river.QueueDefault)
		if _, ok := r.queues[queue]; !ok {
			return deadBecause(fmt.Sprintf("queue %q is not one of the configured queues", queue))
		}
	}
	params := river.InsertManyParams{Args: a, InsertOpts: opts}
	typeOpts := a.InsertOpts()
	unique := outboxrow.HasUnique(opts) || outboxrow.HasUnique(&typeOpts)
	if r.cfg.Sequence != nil && a.decoded != nil {
		if seq, ok := r.cfg.Sequence(a.decoded); ok {
			if seq.Stripes > 1 {
				seq.Key += "#" + strconv.FormatUint(stripeOf(rw.id, seq.Stripes), 10)
			}
			if err := seq.check(); err != nil {
				return deadBecause(err.Error())
			}
			if unique || opts.Pending || typeOpts.Pending {
				return deadBecause("a job of a sequence can be neither unique nor inserted pending")
			}
			return prepared{params: params, seq: &seq}
		}
	}
	if unique {
		return prepared{params: params, unique: true}
	}
	if r.cfg.LockKey != nil && a.decoded != nil {
		if key, ok := r.cfg.LockKey(a.decoded); ok {
			return prepared{params: params, lockKey: key, hasLock: true}
		}
	}
	return prepared{params: params}
}

// stripeOf spreads outbox ids over n stripes. Not id mod n: ids come in
// steps when transactions write several rows (a checkout's two jobs), and
// a step sharing a factor with n would leave stripes empty; a
// multiplicative hash (Fibonacci hashing) spreads any step.
func stripeOf(id int64, n int) uint64 {
	return (uint64(id) * 0x9E3779B97F4A7C15 >> 32) % uint64(n) //nolint:gosec // ids are positive; n ≤ SequenceWidthMax
}

func (r *Relay) makePlan(rows []row) plan {
	var p plan
	type lockID struct{ kind, key string }
	seen := map[lockID]struct{}{}
	for _, rw := range rows {
		pr := r.prepare(rw)
		switch {
		case pr.reason != "":
			p.dead = append(p.dead, deadRow{row: rw, reason: pr.reason})
		case pr.seq != nil:
			p.sequenced = append(p.sequenced, seqParams{seq: *pr.seq, params: pr.params, id: rw.id})
		case pr.unique:
			p.unique = append(p.unique, pr.params)
		case pr.hasLock:
			id := lockID{rw.kind, pr.lockKey}
			if _, dup := seen[id]; dup {
				p.coalesced++
				continue
			}
			seen[id] = struct{}{}
			p.locked = append(p.locked, lockedParams{key: pr.lockKey, params: pr.params})
		default:
			p.plain = append(p.plain, pr.params)
		}
	}
	// One order for every relay: two relays inserting the same keys wait
	// for each other instead of deadlocking.
	slices.SortStableFunc(p.locked, func(a, b lockedParams) int {
		return cmp.Or(cmp.Compare(a.params.Args.Kind(), b.params.Args.Kind()), cmp.Compare(a.key, b.key))
	})
	return p
}

// MoveBatch moves up to Config.BatchSize committed rows in one transaction
// and returns what it did. Rows another relay is moving are skipped. When
// the batch's insert fails for a reason of its rows (River or Postgres
// refused one), the batch is moved again row by row, each in a savepoint,
// and the refused rows become dead rows; any other error (the connection,
// a deadline) rolls back, leaving every row for the next try.
func (r *Relay) MoveBatch(ctx context.Context) (MoveResult, error) {
	return r.move(ctx, 0)
}

// moveNext is the loop's and the movers' MoveBatch: it looks above the
// scan floor, unless a full scan is due.
func (r *Relay) moveNext(ctx context.Context) (MoveResult, error) {
	return r.move(ctx, r.floor.from(time.Now(), r.cfg.ScanLag, r.cfg.FullScanInterval))
}

// move is MoveBatch over the rows above floor.
func (r *Relay) move(ctx context.Context, floor int64) (MoveResult, error) {
	res, err := r.moveBatch(ctx, floor, false)
	var rowErr *rowError
	if errors.As(err, &rowErr) {
		r.cfg.Logger.WarnContext(ctx, "relay: a row of the batch was refused; moving the batch row by row",
			slog.String("err", rowErr.err.Error()))
		res, err = r.moveBatch(ctx, floor, true)
	}
	if err != nil {
		r.errs.Add(1)
		return MoveResult{}, err
	}
	if r.cfg.Sequence != nil {
		// Every batch may free older rows that held back jobs relays
		// noted: place what can be placed now.
		if _, err := r.AppendSequences(ctx); err != nil {
			r.errs.Add(1)
			r.cfg.Logger.ErrorContext(ctx, "relay: placing sequenced jobs failed; the next batch or poll retries",
				slog.String("err", err.Error()))
		}
	}
	if res.Rows > 0 {
		r.batches.Add(1)
		r.rows.Add(int64(res.Rows))
		r.inserted.Add(int64(res.Inserted))
		r.skipped.Add(int64(res.UniqueSkipped))
		r.coalesced.Add(int64(res.Coalesced))
		r.dead.Add(int64(res.Dead))
		if r.cfg.OnMove != nil {
			r.cfg.OnMove(ctx, res)
		}
	}
	return res, nil
}

// rowError is an insert error caused by the batch's rows, not by the
// connection: the batch is worth moving row by row.
type rowError struct{ err error }

func (e *rowError) Error() string { return e.err.Error() }
func (e *rowError) Unwrap() error { return e.err }

func (r *Relay) moveBatch(ctx context.Context, floor int64, careful bool) (MoveResult, error) {
	takenAt := time.Now()
	tx, err := r.pool.Begin(ctx)
	if err != nil {
		return MoveResult{}, fmt.Errorf("relay: beginning: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()

	qrows, err := tx.Query(ctx, r.sql.take, r.cfg.BatchSize, floor)
	if err != nil {
		return MoveResult{}, fmt.Errorf("relay: taking outbox rows: %w", err)
	}
	rows, err := scanRows(qrows)
	if err != nil {
		return MoveResult{}, fmt.Errorf("relay: taking outbox rows: %w", err)
	}
	if len(rows) == 0 {
		return MoveResult{}, tx.Commit(ctx)
	}
	res := MoveResult{Rows: len(rows), OldestCreatedAt: rows[0].createdAt}
	for _, rw := range rows[1:] {
		if rw.createdAt.Before(res.OldestCreatedAt) {
			res.OldestCreatedAt = rw.createdAt
		}
	}
	p := r.makePlan(rows)
	res.Coalesced = p.coalesced

	for i := range p.sequenced {
		if err := pend(&p.sequenced[i]); err != nil {
			p.dead = append(p.dead, deadRow{row: p.sequenced[i].params.Args.(*Args).row, reason: err.Error()}) //nolint:forcetypeassert,errcheck // the relay built every params.Args as *Args
			p.sequenced[i].id = 0
		}
	}
	p.sequenced = slices.DeleteFunc(p.sequenced, func(s seqParams) bool { return s.id == 0 })
	var seqJobs []seqJob
	if careful {
		seqJobs, err = r.insertCareful(ctx, tx, &p, &res)
	} else {
		seqJobs, err = r.insert(ctx, tx, &p, &res)
	}
	if err != nil {
		return MoveResult{}, err
	}
	if err := r.note(ctx, tx, seqJobs); err != nil {
		return MoveResult{}, err
	}
	if len(p.dead) > 0 {
		if err := r.writeDead(ctx, tx, p.dead); err != nil {
			return MoveResult{}, err
		}
		res.Dead = len(p.dead)
		for _, d := range p.dead {
			r.cfg.Logger.WarnContext(ctx, "relay: outbox row refused; moved to outbox_dead_jobs",
				slog.Int64("outbox_id", d.row.id), slog.String("kind", d.row.kind), slog.String("reason", d.reason))
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return MoveResult{}, fmt.Errorf("relay: committing: %w", err)
	}
	r.floor.mark(takenAt, rows[len(rows)-1].id)
	return res, nil
}

// insert inserts the batch's jobs: the plain ones with COPY when they are
// many, the queue-locked ones with one unique INSERT in key order, River's
// unique ones one at a time (two equal ones in one statement would make
// Postgres refuse it), the sequenced ones with one INSERT. It returns the
// sequenced jobs inserted.
func (r *Relay) insert(ctx context.Context, tx pgx.Tx, p *plan, res *MoveResult) ([]seqJob, error) {
	if len(p.plain) > 0 {
		if r.cfg.CopyMinJobs >= 0 && len(p.plain) >= r.cfg.CopyMinJobs {
			n, err := r.client.InsertManyFastTx(ctx, tx, p.plain)
			if err != nil {
				return nil, classify(tx, fmt.Errorf("relay: inserting %d jobs with COPY: %w", len(p.plain), err))
			}
			res.Inserted += n
		} else if _, err := r.insertMany(ctx, tx, p.plain, res); err != nil {
			return nil, err
		}
	}
	if len(p.locked) > 0 {
		params := make([]river.InsertManyParams, len(p.locked))
		for i, l := range p.locked {
			params[i] = l.params
		}
		if _, err := r.insertMany(ctx, tx, params, res); err != nil {
			return nil, err
		}
	}
	for _, params := range p.unique {
		if _, err := r.insertMany(ctx, tx, []river.InsertManyParams{params}, res); err != nil {
			return nil, err
		}
	}
	if len(p.sequenced) == 0 {
		return nil, nil
	}
	params := make([]river.InsertManyParams, len(p.sequenced))
	for i, s := range p.sequenced {
		params[i] = s.params
	}
	results, err := r.insertMany(ctx, tx, params, res)
	if err != nil {
		return nil, err
	}
	return seqJobsOf(results)
}

func (r *Relay) insertMany(ctx context.Context, tx pgx.Tx, params []river.InsertManyParams, res *MoveResult) ([]*rivertype.JobInsertResult, error) {
	results, err := r.client.InsertManyTx(ctx, tx, params)
	if err != nil {
		return nil, classify(tx, fmt.Errorf("relay: inserting %d jobs: %w", len(params), err))
	}
	for _, x := range results {
		if x.UniqueSkippedAsDuplicate {
			res.UniqueSkipped++
		} else {
			res.Inserted++
		}
	}
	return results, nil
}

// seqJobsOf returns the sequenced jobs among results.
func seqJobsOf(results []*rivertype.JobInsertResult) ([]seqJob, error) {
	out := make([]seqJob, 0, len(results))
	for _, x := range results {
		if x.Job == nil || x.UniqueSkippedAsDuplicate {
			continue
		}
		j, ok, err := seqJobOf(x.Job.ID, x.Job.Metadata)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, j)
		}
	}
	return out, nil
}

// insertCareful inserts every job of the batch on its own, in a savepoint:
// a job River or Postgres refuses for what it holds becomes a dead row.
func (r *Relay) insertCareful(ctx context.Context, tx pgx.Tx, p *plan, res *MoveResult) ([]seqJob, error) {
	all := append([]river.InsertManyParams(nil), p.plain...)
	for _, l := range p.locked {
		all = append(all, l.params)
	}
	all = append(all, p.unique...)
	for _, s := range p.sequenced {
		all = append(all, s.params)
	}
	p.plain, p.locked, p.unique, p.sequenced = nil, nil, nil, nil
	var seqJobs []seqJob
	for _, params := range all {
		sp, err := tx.Begin(ctx)
		if err != nil {
			return nil, fmt.Errorf("relay: savepoint: %w", err)
		}
		var one MoveResult
		results, err := r.insertMany(ctx, sp, []river.InsertManyParams{params}, &one)
		var rowErr *rowError
		switch {
		case err == nil:
			if err := sp.Commit(ctx); err != nil {
				return nil, fmt.Errorf("relay: releasing a savepoint: %w", err)
			}
			res.Inserted += one.Inserted
			res.UniqueSkipped += one.UniqueSkipped
			jobs, err := seqJobsOf(results)
			if err != nil {
				return nil, err
			}
			seqJobs = append(seqJobs, jobs...)
		case errors.As(err, &rowErr):
			if rbErr := sp.Rollback(ctx); rbErr != nil {
				return nil, fmt.Errorf("relay: rolling back a savepoint: %w", rbErr)
			}
			a := params.Args.(*Args) //nolint:errcheck,forcetypeassert // the relay built every params.Args as *Args: anything else is a bug to panic on
			p.dead = append(p.dead, deadRow{row: a.row, reason: rowErr.err.Error()})
		default:
			return nil, err
		}
	}
	return seqJobs, nil
}

// classify marks err as caused by the rows when it is a refusal (River's
// validation, or Postgres' data, integrity or limit errors) rather than the
// connection or a deadline.
func classify(tx pgx.Tx, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || tx.Conn().IsClosed() {
		return err
	}
	var netErr net.Error
	if errors.As(err, &netErr) {
		return err
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code[:2] {
		case "22", "23", "54": // data exception, integrity violation, program limit exceeded
			return &rowError{err: err}
		}
		return err
	}
	if pgconn.Timeout(err) || pgconn.SafeToRetry(err) {
		return err
	}
	return &rowError{err: err} // River refused the params before any SQL
}

func (r *Relay) writeDead(ctx context.Context, tx pgx.Tx, dead []deadRow) error {
	n := len(dead)
	var (
		ids       = make([]int64, n)
		kinds     = make([]string, n)
		args      = make([]string, n)
		queues    = make([]*string, n)
		prios     = make([]*int32, n)
		attempts  = make([]*int32, n)
		scheduled = make([]*time.Time, n)
		metadata  = make([]*string, n)
		options   = make([]*string, n)
		txIDs     = make([]string, n)
		created   = make([]time.Time, n)
		reasons   = make([]string, n)
	)
	for i, d := range dead {
		rw := d.row
		ids[i], kinds[i], args[i] = rw.id, rw.kind, rw.args
		queues[i], prios[i], attempts[i], scheduled[i] = rw.opts.Queue, rw.opts.Priority, rw.opts.MaxAttempts, rw.opts.ScheduledAt
		metadata[i], options[i], txIDs[i], created[i] = rw.metadata, rw.options, rw.txID, rw.createdAt
		reasons[i] = d.reason
	}
	if _, err := tx.Exec(ctx, r.sql.dead, ids, kinds, args, queues, prios, attempts, scheduled,
		metadata, options, txIDs, created, reasons); err != nil {
		return fmt.Errorf("relay: writing %d dead rows: %w", n, err)
	}
	return nil
}
