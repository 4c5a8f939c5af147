package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/outbox/relay"
)

// Defaults of HoldbackConfig.
const (
	HoldbackHoldDefault     = 10 * time.Minute
	HoldbackIntervalDefault = 30 * time.Second
	HoldbackRateDefault     = 1000
)

// The stacks of a holdback run.
const (
	// HoldbackBare is River alone: one job inserted per transaction with
	// River's InsertTx beside a business row, worked by a River client
	// fetching as often as the runtime's (jobs.FetchCooldownDefault).
	HoldbackBare = "bare"
	// HoldbackFull is the whole stack: the business row, its job in the
	// outbox table and an event per transaction (outbox.InTx), a relay,
	// and the runtime's client (jobs.NewClient: metrics, the needed-check
	// and a worker lock over 1,000 keys, so job_locks churns too).
	HoldbackFull = "full"
)

// HoldbackApplicationName is the application_name of the session that
// holds the snapshot: what an operator sees named in db_vacuum_holdback.
const HoldbackApplicationName = "aftercommit-bench-holdback"

// holdbackTopic is the topic of the full stack's events.
const holdbackTopic = "bench.holdback"

// holdbackKeys is how many worker-lock keys the full stack's jobs use.
const holdbackKeys = 1000

// HoldbackConfig tunes Holdback.
type HoldbackConfig struct {
	// DatabaseURL reaches the server as a role that may create databases:
	// each side works in a database of its own, so that the held snapshot
	// holds back vacuum on its side alone.
	DatabaseURL string
	// Hold is how long the held transaction stays open. Defaults to
	// HoldbackHoldDefault.
	Hold time.Duration
	// Interval is how often each side is sampled; the run warms up for two
	// intervals before the hold and watches two more after it. Defaults to
	// HoldbackIntervalDefault.
	Interval time.Duration
	// Rate is the jobs per second enqueued on each side. Defaults to
	// HoldbackRateDefault.
	Rate int
	// Stacks are run one after the other. Defaults to bare, then full.
	Stacks []string
	// Apart runs the clear side first, then the held side, each alone on
	// the server, on the same timeline: for a machine too small to carry
	// both at the rate. Defaults to false: both at once, so that they
	// share the machine's noise.
	Apart bool
	// Progress, when set, receives each sample as it is taken.
	Progress io.Writer
}

func (c HoldbackConfig) withDefaults() HoldbackConfig {
	if c.Hold == 0 {
		c.Hold = HoldbackHoldDefault
	}
	if c.Interval == 0 {
		c.Interval = HoldbackIntervalDefault
	}
	if c.Rate == 0 {
		c.Rate = HoldbackRateDefault
	}
	if len(c.Stacks) == 0 {
		c.Stacks = []string{HoldbackBare, HoldbackFull}
	}
	return c
}

// ValidateHoldback reports a HoldbackConfig out of range (after its
// defaults), wrapping ErrInvalidConfig.
func ValidateHoldback(cfg HoldbackConfig) error {
	cfg = cfg.withDefaults()
	switch {
	case cfg.Interval < 100*time.Millisecond:
		return fmt.Errorf("%w: the interval must be at least 100ms, got %s", ErrInvalidConfig, cfg.Interval)
	case cfg.Hold < cfg.Interval:
		return fmt.Errorf("%w: the hold (%s) must be at least one interval (%s)", ErrInvalidConfig, cfg.Hold, cfg.Interval)
	case cfg.Rate < 1 || cfg.Rate > 20_000:
		return fmt.Errorf("%w: the rate must be in 1…20000 jobs/s, got %d", ErrInvalidConfig, cfg.Rate)
	}
	for _, s := range cfg.Stacks {
		if s != HoldbackBare && s != HoldbackFull {
			return fmt.Errorf("%w: unknown stack %q (want %s or %s)", ErrInvalidConfig, s, HoldbackBare, HoldbackFull)
		}
	}
	return nil
}

// HoldbackSample is one interval of one side.
type HoldbackSample struct {
	// At is the end of the interval, since the stack's start.
	At time.Duration `json:"at_ns"`
	// Held says whether the snapshot was held during the whole interval
	// (on the held side; never on the clear side).
	Held bool `json:"held"`
	// Enqueued and Done are the jobs committed and finished per second.
	Enqueued float64 `json:"enqueued_per_s"`
	Done     float64 `json:"done_per_s"`
	// P50 and P99 are the commit → start latencies of the jobs started in
	// the interval, in milliseconds.
	P50 float64 `json:"p50_ms"`
	P99 float64 `json:"p99_ms"`
	// Backlog is the jobs committed but not started at the interval's end.
	Backlog int64 `json:"backlog"`
	// Dead are the dead tuples of the stack's tables (pg_stat_user_tables,
	// through db_table_health); RiverJobBytes is river_job's total size.
	Dead          map[string]int64 `json:"dead_tuples"`
	RiverJobBytes int64            `json:"river_job_bytes"`
	// Holder is what db_vacuum_holdback names as the oldest snapshot
	// holding back vacuum in the side's database, of a transaction open
	// over 200 ms ("" when none), and HeldFor how long that transaction
	// has run.
	Holder  string        `json:"holder,omitempty"`
	HeldFor time.Duration `json:"held_for_ns,omitempty"`
}

// HoldbackSide is one side of a stack: held or clear.
type HoldbackSide struct {
	Name    string           `json:"name"`
	Samples []HoldbackSample `json:"samples"`
}

// HoldbackStack is one stack's run: its held side beside its clear side,
// measured at the same time on the same server.
type HoldbackStack struct {
	Stack string `json:"stack"`
	// HoldFrom and HoldTo bound the hold, since the stack's start.
	HoldFrom time.Duration `json:"hold_from_ns"`
	HoldTo   time.Duration `json:"hold_to_ns"`
	Held     HoldbackSide  `json:"held"`
	Clear    HoldbackSide  `json:"clear"`
	// NamedAfter is how long after the hold began the first sample of the
	// held side named the holder (-1: never).
	NamedAfter time.Duration `json:"named_after_ns"`
	// ThroughputRatio and P99Ratio compare the held side's last interval
	// of the hold with the clear side's medians over the hold's intervals.
	ThroughputRatio float64 `json:"throughput_ratio"`
	P99Ratio        float64 `json:"p99_ratio"`
}

// HoldbackReport is a whole holdback run.
type HoldbackReport struct {
	Server     string          `json:"server"`
	Autovacuum string          `json:"autovacuum"`
	Rate       int             `json:"rate"`
	Interval   time.Duration   `json:"interval_ns"`
	Hold       time.Duration   `json:"hold_ns"`
	Apart      bool            `json:"apart"`
	Stacks     []HoldbackStack `json:"stacks"`
	StartedAt  time.Time       `json:"started_at"`
	Took       time.Duration   `json:"took_ns"`
}

// Holdback measures what a transaction that holds back vacuum does to a
// steady load: for each stack, two sides run on the server, each in a
// database of its own at cfg.Rate jobs/s, at once (with cfg.Apart, one
// after the other on the same timeline); after two intervals a
// session on the held side opens a REPEATABLE READ transaction, takes its
// snapshot and holds it for cfg.Hold, then lets go, and the run watches
// two intervals more. Every interval both sides are sampled: jobs done per
// second, commit → start p50 and p99, the backlog, the dead tuples of
// river_job, outbox_jobs, job_locks and outbox_events, and what
// db_vacuum_holdback names.
//
// Run it against a server with autovacuum on, as production runs
// (`aftercommit bench --holdback D --private-server` starts one).
func Holdback(ctx context.Context, cfg HoldbackConfig) (*HoldbackReport, error) {
	cfg = cfg.withDefaults()
	if err := ValidateHoldback(cfg); err != nil {
		return nil, err
	}
	admin, err := connectAdmin(ctx, cfg.DatabaseURL)
	if err != nil {
		return nil, err
	}
	defer admin.Close()
	report := &HoldbackReport{Rate: cfg.Rate, Interval: cfg.Interval, Hold: cfg.Hold, Apart: cfg.Apart, StartedAt: time.Now()}
	if err := admin.QueryRow(ctx, `SELECT 'PostgreSQL ' || current_setting('server_version'), current_setting('autovacuum')`).
		Scan(&report.Server, &report.Autovacuum); err != nil {
		return nil, err
	}
	runID := newRunID()
	for _, stack := range cfg.Stacks {
		s, err := runHoldbackStack(ctx, cfg, admin, runID, stack)
		if err != nil {
			return nil, fmt.Errorf("holdback, %s stack: %w", stack, err)
		}
		report.Stacks = append(report.Stacks, *s)
	}
	report.Took = time.Since(report.StartedAt)
	return report, nil
}

// withDatabase returns the connection string u naming database db instead.
func withDatabase(u, db string) (string, error) {
	if strings.HasPrefix(u, "postgres://") || strings.HasPrefix(u, "postgresql://") {
		parsed, err := url.Parse(u)
		if err != nil {
			return "", fmt.Errorf("%w: the database URL: %w", ErrInvalidConfig, err)
		}
		parsed.Path = "/" + db
		return parsed.String(), nil
	}
	return u + " dbname=" + db, nil // a keyword/value string: the last dbname wins
}

// holdbackSide is one side of a stack while it runs.
type holdbackSide struct {
	name string
	env  *Env
	db   string
	// enqueued, started count jobs; lat holds the start latencies of the
	// current interval, done its finished jobs.
	enqueued, started atomic.Int64
	// lastEnqueued is enqueued at the last sample.
	lastEnqueued int64
	mu           sync.Mutex
	lat          []time.Duration
	done         int
	samples      []HoldbackSample
}

// holdbackArgs is the job of the holdback runs: the time just before its
// transaction began.
type holdbackArgs struct {
	N  int   `json:"n"`
	At int64 `json:"at"`
}

func (holdbackArgs) Kind() string { return "bench.holdback" }

// holdbackWorker records each job's start latency on its side.
type holdbackWorker struct {
	river.WorkerDefaults[holdbackArgs]
	side *holdbackSide
}

func (w holdbackWorker) Work(_ context.Context, job *river.Job[holdbackArgs]) error {
	lat := time.Since(time.Unix(0, job.Args.At))
	w.side.started.Add(1)
	w.side.mu.Lock()
	w.side.lat = append(w.side.lat, lat)
	w.side.done++
	w.side.mu.Unlock()
	return nil
}

// lockedHoldbackWorker is the full stack's worker: a worker lock per key
// and the needed-check.
type lockedHoldbackWorker struct{ holdbackWorker }

func (lockedHoldbackWorker) LockFor(_ context.Context, job *river.Job[holdbackArgs]) (jobs.Lock, error) {
	return jobs.Lock{Namespace: "bench.holdback", Key: strconv.Itoa(job.Args.N % holdbackKeys)}, nil
}

func (lockedHoldbackWorker) Needed(context.Context, *river.Job[holdbackArgs]) (bool, error) {
	return true, nil
}

func runHoldbackStack(ctx context.Context, cfg HoldbackConfig, admin *pgxpool.Pool, runID, stack string) (*HoldbackStack, error) {
	heldSide, clearSide := &holdbackSide{name: "held"}, &holdbackSide{name: "clear"}
	for _, side := range []*holdbackSide{heldSide, clearSide} {
		side.db = "aftercommit_holdback_" + stack + "_" + side.name + "_" + runID
		ident := pgx.Identifier{side.db}.Sanitize()
		if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+ident+" WITH (FORCE)"); err != nil {
			return nil, err
		}
		if _, err := admin.Exec(ctx, "CREATE DATABASE "+ident); err != nil {
			return nil, fmt.Errorf("creating database %s: %w", side.db, err)
		}
		defer func() {
			dropCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			if side.env != nil {
				side.env.close(dropCtx)
			}
			_, _ = admin.Exec(dropCtx, "DROP DATABASE IF EXISTS "+ident+" WITH (FORCE)")
		}()
		dbURL, err := withDatabase(cfg.DatabaseURL, side.db)
		if err != nil {
			return nil, err
		}
		if side.env, err = newEnv(ctx, Config{DatabaseURL: dbURL, Scale: 1, Duration: cfg.Interval}, runID, "holdback"); err != nil {
			return nil, err
		}
	}

	out := &HoldbackStack{Stack: stack, HoldFrom: 2 * cfg.Interval, HoldTo: 2*cfg.Interval + cfg.Hold, NamedAfter: -1}
	if cfg.Apart {
		for _, side := range []*holdbackSide{clearSide, heldSide} {
			if err := runHoldbackSides(ctx, cfg, stack, out, side); err != nil {
				return nil, err
			}
		}
	} else if err := runHoldbackSides(ctx, cfg, stack, out, heldSide, clearSide); err != nil {
		return nil, err
	}
	out.Held = HoldbackSide{Name: "held", Samples: heldSide.samples}
	out.Clear = HoldbackSide{Name: "clear", Samples: clearSide.samples}
	out.judge()
	return out, nil
}

// runHoldbackSides runs stack on sides at once for the run's timeline,
// holding the snapshot on the held side, and samples them.
func runHoldbackSides(ctx context.Context, cfg HoldbackConfig, stack string, out *HoldbackStack, sides ...*holdbackSide) error {
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg      sync.WaitGroup
		errOnce sync.Once
		failure error
	)
	fail := func(err error) {
		if err != nil && !errors.Is(err, context.Canceled) {
			errOnce.Do(func() { failure = err })
			cancel()
		}
	}
	total := 4*cfg.Interval + cfg.Hold
	start := time.Now()
	for _, side := range sides {
		produce, stop, err := startHoldbackStack(runCtx, stack, side)
		if err != nil {
			return err
		}
		defer stop()
		wg.Go(func() {
			var n atomic.Int64
			_, err := paced(runCtx, cfg.Rate, total, func(ctx context.Context) error {
				if err := produce(ctx, int(n.Add(1))); err != nil {
					return err
				}
				side.enqueued.Add(1)
				return nil
			})
			fail(err)
		})
		if side.name == "held" {
			wg.Go(func() { fail(holdSnapshot(runCtx, side.env, start.Add(out.HoldFrom), start.Add(out.HoldTo))) })
		}
	}

	ticker := time.NewTicker(cfg.Interval)
	defer ticker.Stop()
	last := start
	for runCtx.Err() == nil && time.Since(start) < total-cfg.Interval/2 {
		select {
		case <-runCtx.Done():
		case now := <-ticker.C:
			at := now.Sub(start)
			for _, side := range sides {
				smp, err := side.sample(runCtx, now.Sub(last), at)
				if err != nil {
					fail(err)
					break
				}
				smp.Held = side.name == "held" && at-cfg.Interval >= out.HoldFrom && at <= out.HoldTo+cfg.Interval/10
				if side.name == "held" && smp.Holder == HoldbackApplicationName && out.NamedAfter < 0 && at > out.HoldFrom {
					out.NamedAfter = at - out.HoldFrom
				}
				side.samples = append(side.samples, *smp)
				if cfg.Progress != nil {
					_, _ = fmt.Fprintf(cfg.Progress, "%6s  %-5s %-5s %s\n", at.Round(time.Second), stack, side.name, strings.ReplaceAll(smp.row(), "\t", "  "))
				}
			}
			last = now
		}
	}
	cancel()
	wg.Wait()
	return failure
}

// judge compares the held side's last interval of the hold with the
// clear side's medians over the intervals of the hold: one interval of the
// clear side is noisy (its p99 jumps 5× while autovacuum visits river_job).
func (st *HoldbackStack) judge() {
	last := -1
	var clearDone, clearP99 []float64
	for i, h := range st.Held.Samples {
		if !h.Held || i >= len(st.Clear.Samples) {
			continue
		}
		last = i
		clearDone = append(clearDone, st.Clear.Samples[i].Done)
		clearP99 = append(clearP99, st.Clear.Samples[i].P99)
	}
	if last < 0 {
		return
	}
	st.ThroughputRatio = ratio(st.Held.Samples[last].Done, median(clearDone))
	st.P99Ratio = ratio(st.Held.Samples[last].P99, median(clearP99))
}

// startHoldbackStack starts stack's workers on side and returns how one
// transaction enqueues job n, and how to stop the workers.
func startHoldbackStack(ctx context.Context, stack string, side *holdbackSide) (func(ctx context.Context, n int) error, func(), error) {
	env := side.env
	const insertPing = `INSERT INTO pings (note) VALUES ('holdback') RETURNING id`
	if stack == HoldbackBare {
		workers := river.NewWorkers()
		river.AddWorker(workers, holdbackWorker{side: side})
		// River's own fetch settings (a fetch every 100 ms at most) cap
		// 100 workers at 1,000 jobs/s: the runtime's, so that the stacks
		// differ by what they run, not by how often they fetch.
		client, err := river.NewClient(riverpgxv5.New(env.Pool), &river.Config{
			Logger: env.Logger, Workers: workers, Queues: map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: 100}},
			FetchCooldown: jobs.FetchCooldownDefault, FetchPollInterval: jobs.FetchPollIntervalDefault,
		})
		if err != nil {
			return nil, nil, err
		}
		if err := client.Start(ctx); err != nil {
			return nil, nil, err
		}
		produce := func(ctx context.Context, n int) error {
			at := time.Now().UnixNano()
			return pgx.BeginFunc(ctx, env.Pool, func(tx pgx.Tx) error {
				var id int64
				if err := tx.QueryRow(ctx, insertPing).Scan(&id); err != nil {
					return err
				}
				_, err := client.InsertTx(ctx, tx, holdbackArgs{N: n, At: at}, nil)
				return err
			})
		}
		return produce, func() { stopClient(ctx, client) }, nil
	}
	reg := jobs.NewRegistry()
	jobs.AddWorker(reg, river.QueueDefault, lockedHoldbackWorker{holdbackWorker{side: side}})
	reg.AddTopic("bench", holdbackTopic)
	client, err := defaultQueueClient(env, reg, 100, nil)
	if err != nil {
		return nil, nil, err
	}
	ob, err := jobs.NewOutbox(env.Pool, client, reg, &outbox.Config{Logger: env.Logger})
	if err != nil {
		return nil, nil, err
	}
	rl, err := jobs.NewRelay(env.Pool, client, reg, &relay.Config{Schema: env.Schema, Logger: env.Logger})
	if err != nil {
		return nil, nil, err
	}
	if err := client.Start(ctx); err != nil {
		return nil, nil, err
	}
	if err := rl.Start(ctx); err != nil {
		stopClient(ctx, client)
		return nil, nil, err
	}
	produce := func(ctx context.Context, n int) error {
		at := time.Now().UnixNano()
		_, err := ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
			var id int64
			if err := tx.QueryRow(ctx, insertPing).Scan(&id); err != nil {
				return err
			}
			if err := tx.Enqueue(holdbackArgs{N: n, At: at}, nil); err != nil {
				return err
			}
			return tx.Publish(holdbackTopic, map[string]int64{"ping_id": id})
		})
		return err
	}
	return produce, func() { stopRelay(ctx, rl); stopClient(ctx, client) }, nil
}

// holdSnapshot opens a REPEATABLE READ transaction in env's database at
// from, takes its snapshot, holds it until to and rolls it back.
func holdSnapshot(ctx context.Context, env *Env, from, to time.Time) error {
	select {
	case <-ctx.Done():
		return nil
	case <-time.After(time.Until(from)):
	}
	cfg := env.Pool.Config().ConnConfig.Copy()
	cfg.RuntimeParams["application_name"] = HoldbackApplicationName
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close(context.WithoutCancel(ctx)) }()
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	var n int64
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM pings`).Scan(&n); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
	case <-time.After(time.Until(to)):
	}
	return nil
}

// holdbackTables are the tables whose dead tuples a sample reads.
var holdbackTables = []string{"river_job", "outbox_jobs", "job_locks", "outbox_events"}

// sample ends the side's interval of length d, at at since the start.
func (side *holdbackSide) sample(ctx context.Context, d, at time.Duration) (*HoldbackSample, error) {
	side.mu.Lock()
	lat, done := side.lat, side.done
	side.lat, side.done = nil, 0
	side.mu.Unlock()
	s := &HoldbackSample{At: at, Done: float64(done) / d.Seconds(), Dead: map[string]int64{},
		Backlog: side.enqueued.Load() - side.started.Load()}
	enqueued := side.enqueued.Load()
	s.Enqueued = float64(enqueued-side.lastEnqueued) / d.Seconds()
	side.lastEnqueued = enqueued
	if len(lat) > 0 {
		slices.Sort(lat)
		s.P50 = ms(lat[len(lat)/2])
		s.P99 = ms(lat[min(len(lat)-1, len(lat)*99/100)])
	}
	rows, err := side.env.Pool.Query(ctx, `SELECT table_name, dead_tuples, total_bytes FROM db_table_health WHERE table_name = ANY ($1)`, holdbackTables)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var (
			name        string
			dead, bytes int64
		)
		if err := rows.Scan(&name, &dead, &bytes); err != nil {
			return nil, err
		}
		s.Dead[name] = dead
		if name == "river_job" {
			s.RiverJobBytes = bytes
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var heldFor *time.Duration
	err = side.env.Pool.QueryRow(ctx, `SELECT coalesce(application_name, holder), held_for FROM db_vacuum_holdback
		WHERE held_for > interval '200 milliseconds' ORDER BY xmin_age DESC NULLS LAST LIMIT 1`).Scan(&s.Holder, &heldFor)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return nil, err
	case heldFor != nil:
		s.HeldFor = *heldFor
	}
	return s, nil
}

// ms is d in milliseconds.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

const holdbackHeader = "  t\tside\theld\tenqueued/s\tdone/s\tp50 ms\tp99 ms\tbacklog\tdead river_job\tdead outbox_jobs\tdead job_locks\tdead outbox_events\triver_job\tholder (held for)"

func (s HoldbackSample) row() string {
	held := ""
	if s.Held {
		held = "held"
	}
	holder := "-"
	if s.Holder != "" {
		holder = fmt.Sprintf("%s (%s)", s.Holder, s.HeldFor.Round(time.Second))
	}
	return fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s",
		held, formatValue(s.Enqueued), formatValue(s.Done), formatValue(s.P50), formatValue(s.P99), s.Backlog,
		s.Dead["river_job"], s.Dead["outbox_jobs"], s.Dead["job_locks"], s.Dead["outbox_events"], formatBytes(s.RiverJobBytes), holder)
}

// Print writes the report: per stack, both sides' samples interleaved,
// then the held side against the clear side over the hold's last interval.
func (r *HoldbackReport) Print(w io.Writer) {
	_, _ = fmt.Fprintf(w, "aftercommit bench --holdback: %s, autovacuum %s; %d jobs/s per side, a sample every %s; a REPEATABLE READ snapshot held %s on the held side; took %s\n",
		r.Server, r.Autovacuum, r.Rate, r.Interval, r.Hold, r.Took.Round(time.Second))
	if r.Apart {
		_, _ = fmt.Fprintf(w, "the sides ran apart: the clear side, then the held side, each alone on the server (--apart)\n")
	}
	if r.Autovacuum != "on" {
		_, _ = fmt.Fprintf(w, "autovacuum is off on this server: dead tuples pile up on both sides, figures are not a production server's (use --private-server)\n")
	}
	for _, st := range r.Stacks {
		_, _ = fmt.Fprintf(w, "\n%s stack: %s; the hold from %s to %s\n", st.Stack, holdbackStackNote(st.Stack), st.HoldFrom, st.HoldTo)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		_, _ = fmt.Fprintln(tw, holdbackHeader+"\t")
		for i := range max(len(st.Held.Samples), len(st.Clear.Samples)) {
			for _, side := range []HoldbackSide{st.Held, st.Clear} {
				if i < len(side.Samples) {
					smp := side.Samples[i]
					_, _ = fmt.Fprintf(tw, "  %s\t%s\t%s\t\n", smp.At.Round(time.Second), side.Name, smp.row())
				}
			}
		}
		_ = tw.Flush()
		named := "never named"
		if st.NamedAfter >= 0 {
			named = fmt.Sprintf("named in db_vacuum_holdback by the first sample, %s after the hold began", st.NamedAfter.Round(time.Second))
		}
		_, _ = fmt.Fprintf(w, "the hold's last interval ÷ the clear side's median over the hold: jobs/s ×%.2f, p99 ×%.2f; the holder %s\n",
			st.ThroughputRatio, st.P99Ratio, named)
	}
}

// holdbackStackNote says what a stack runs.
func holdbackStackNote(stack string) string {
	if stack == HoldbackBare {
		return "River alone (InsertTx beside a pings row; a River client fetching as often as the runtime's, 100 workers)"
	}
	return "outbox.InTx (a pings row, its job in outbox_jobs, an event), a relay, jobs.NewClient (metrics, needed-check, a worker lock over 1,000 keys), 100 workers"
}
