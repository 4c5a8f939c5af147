package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/aftercommit/aftercommit/jobs/jobstats"
)

func printStatsUsage(w io.Writer, printFlags func(io.Writer)) {
	fmt.Fprintf(w, `Usage:
  aftercommit stats [--watch] [--interval D] [--job-timeout D] [--json]

Prints the job views of the database as tables, read in one snapshot:
job_kind_stats (per kind, the last hour and the last 24 hours: completed,
failed attempts, discarded, cancelled, p50/p95/p99 run time and queue
latency), queue_depth (jobs per queue and state), stuck_jobs (running
longer than the job timeout), failing_jobs (the last error of each kind);
flow control: the worker locks and semaphores (job_locks: live and expired
leases per key; the %[1]d keys with the most holders), the rate limits
(job_rate_limit_status: the limit, starts in the period, how far ahead
refused jobs are booked, admitted and delayed starts; the %[1]d keys booked
furthest ahead, then the busiest) and the sequences (job_sequence_status:
waiting and running jobs, the head job; every stuck sequence and the %[1]d
with the most jobs waiting; a fair share's stripes "key#0", "key#1", ... are
sequences of their own); and the outbox: outbox_depth (jobs enqueued and
not yet relayed into River's job table, how long the oldest has waited, dead
rows) and the latest rows the relay refused, with their reasons
('aftercommit jobs list --outbox' and '--dead' list them all). --watch
prints them again every --interval until interrupted.

Exit codes: 0 done (also when --watch is interrupted), 1 failure, 2 bad
usage, 130 interrupted.

Flags:
`, jobstats.FlowRowsDefault)
	printFlags(w)
}

func runStats(ctx context.Context, args []string, e *env) int {
	c := newFrame("stats", e, printStatsUsage)
	fs := c.fs
	watch := fs.Bool("watch", false, "print again every --interval until interrupted")
	interval := fs.Duration("interval", 2*time.Second, "how often --watch prints (at least 100ms)")
	timeout := fs.Duration("job-timeout", 0, "running longer than this counts as stuck (default: the aftercommit.job_timeout setting, else 1m)")
	asJSON := fs.Bool("json", false, "print JSON")

	if _, code, ok := c.parse(args, true); !ok {
		return code
	}
	switch {
	case *interval < 100*time.Millisecond:
		return c.usageError(fmt.Sprintf("--interval must be at least 100ms, got %s", *interval))
	case *timeout < 0:
		return c.usageError(fmt.Sprintf("--job-timeout must not be negative, got %s", *timeout))
	}
	c.resolveDB()

	pool, code, ok := c.connect(ctx, 0)
	if !ok {
		return code
	}
	defer pool.Close()

	show := func() error {
		report, err := readStats(ctx, pool, *timeout)
		if err != nil {
			return err
		}
		if *asJSON {
			return writeJSON(e.stdout, newStatsView(report))
		}
		if *watch {
			fmt.Fprint(e.stdout, "\x1b[H\x1b[2J") // home, clear screen
		}
		printStats(e.stdout, report)
		return nil
	}
	if err := show(); err != nil {
		return reportError(ctx, e, err)
	}
	if !*watch {
		return exitOK
	}
	ticker := time.NewTicker(*interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return exitOK
		case <-ticker.C:
			if err := show(); err != nil {
				if ctx.Err() != nil {
					return exitOK
				}
				return reportError(ctx, e, err)
			}
		}
	}
}

func readStats(ctx context.Context, pool *pgxpool.Pool, timeout time.Duration) (*jobstats.Report, error) {
	report, err := jobstats.Collect(ctx, pool, &jobstats.Opts{JobTimeout: timeout})
	if err != nil {
		if sqlState(err) == "42P01" {
			return nil, fmt.Errorf("aftercommit stats: the job views are missing: run 'aftercommit migrate up' (%w)", err)
		}
		return nil, fmt.Errorf("aftercommit stats: %w", err)
	}
	return report, nil
}

// printStats writes report as tables.
func printStats(w io.Writer, r *jobstats.Report) {
	for _, p := range []struct {
		period jobstats.Period
		title  string
	}{{jobstats.PeriodHour, "Jobs by kind, last hour"}, {jobstats.PeriodDay, "Jobs by kind, last 24 hours"}} {
		var rows [][]string
		for _, k := range r.Kinds {
			if k.Period != p.period {
				continue
			}
			rows = append(rows, []string{k.Kind, itoa(k.Completed), itoa(k.Failed), itoa(k.Discarded), itoa(k.Cancelled),
				ms(k.RunTimeP50, k.Completed), ms(k.RunTimeP95, k.Completed), ms(k.RunTimeP99, k.Completed),
				ms(k.QueueLatencyP50, k.Completed), ms(k.QueueLatencyP95, k.Completed), ms(k.QueueLatencyP99, k.Completed)})
		}
		printTable(w, p.title,
			[]string{"KIND", "COMPLETED", "FAILED", "DISCARDED", "CANCELLED", "RUN p50", "p95", "p99", "LATENCY p50", "p95", "p99"}, rows)
	}

	var rows [][]string
	for _, q := range r.Queues {
		rows = append(rows, []string{q.Queue, string(q.State), itoa(q.Jobs), formatTime(q.OldestScheduledAt)})
	}
	printTable(w, "Queues", []string{"QUEUE", "STATE", "JOBS", "OLDEST SCHEDULED"}, rows)

	rows = nil
	for _, s := range r.Stuck {
		rows = append(rows, []string{itoa(s.ID), s.Kind, s.Queue, fmt.Sprintf("%d/%d", s.Attempt, s.MaxAttempts),
			s.RunningFor.Round(time.Second).String(), s.Timeout.String(), s.AttemptedBy})
	}
	printTable(w, "Stuck jobs (running longer than the job timeout)",
		[]string{"ID", "KIND", "QUEUE", "ATTEMPT", "RUNNING FOR", "TIMEOUT", "BY"}, rows)

	rows = nil
	for _, f := range r.Failing {
		rows = append(rows, []string{f.Kind, itoa(f.JobID), string(f.State), fmt.Sprintf("%d/%d", f.Attempt, f.MaxAttempts),
			formatTime(f.ErrorAt), truncate(oneLine(f.Error), 80)})
	}
	printTable(w, "Failing kinds (the last error of each)", []string{"KIND", "JOB", "STATE", "ATTEMPT", "AT", "ERROR"}, rows)

	printLocks(w, &r.Locks)
	printRateLimits(w, &r.RateLimits)
	printSequences(w, &r.Sequences)
	printOutbox(w, &r.Outbox)
	printEventRelays(w, r.EventRelays)
	printVacuum(w, &r.Vacuum)
}

// printEventRelays writes the relays of outbox_events to NATS JetStream,
// when one ever ran; nothing otherwise.
func printEventRelays(w io.Writer, relays []jobstats.EventRelay) {
	if len(relays) == 0 {
		return
	}
	rows := make([][]string, 0, len(relays))
	for _, r := range relays {
		owner := "none (no relay holds the lease)"
		if r.Active {
			owner = r.Owner
		}
		oldest := "-"
		if r.Pending > 0 {
			oldest = formatAge(r.OldestPendingAge)
		}
		acked := "never"
		if !r.AckedAt.IsZero() {
			acked = formatTime(r.AckedAt)
		}
		rows = append(rows, []string{r.Stream, owner, itoa(r.LastID), itoa(r.LastSeq), itoa(r.Pending), oldest, acked})
	}
	printTable(w, "Events relays (outbox_events to NATS JetStream; SELECT * FROM outbox_event_relay_lag)",
		[]string{"STREAM", "ACTIVE RELAY", "LAST EVENT", "STREAM SEQ", "PENDING", "OLDEST PENDING", "LAST ACK"}, rows)
}

// printVacuum writes what holds back vacuum, when something has for over
// jobstats.HoldbackMinDefault, with the job tables' dead tuples; nothing
// otherwise.
func printVacuum(w io.Writer, v *jobstats.VacuumStats) {
	if len(v.Holders) == 0 {
		return
	}
	rows := make([][]string, 0, len(v.Holders))
	for _, h := range v.Holders {
		pid, held := "-", "-"
		if h.PID != 0 {
			pid = strconv.Itoa(int(h.PID))
		}
		if h.HeldFor > 0 {
			held = formatAge(h.HeldFor)
		}
		rows = append(rows, []string{h.Holder, pid, h.User, h.Application, h.State, itoa(h.XminAge), held, truncate(oneLine(h.Query), 60)})
	}
	printTable(w, "Vacuum held back (snapshots open over "+jobstats.HoldbackMinDefault.String()+", oldest first; end them or shorten them: SELECT * FROM db_vacuum_holdback)",
		[]string{"HOLDER", "PID", "USER", "APPLICATION", "STATE", "XMIN AGE", "HELD FOR", "QUERY"}, rows)
	rows = rows[:0]
	for _, t := range v.Tables {
		last := "never"
		if !t.LastAutovacuum.IsZero() {
			last = formatTime(t.LastAutovacuum)
		}
		rows = append(rows, []string{t.Table, itoa(t.Live), itoa(t.Dead), last})
	}
	printTable(w, "Dead tuples of the job tables", []string{"TABLE", "LIVE", "DEAD", "LAST AUTOVACUUM"}, rows)
}

// printLocks writes the worker locks' leases per key.
func printLocks(w io.Writer, l *jobstats.LockStats) {
	if l.Denied {
		fmt.Fprint(w, "Worker locks\n  (this role may not read job_locks: the worker role may)\n\n")
		return
	}
	title := "Worker locks"
	if l.Keys > 0 {
		title += fmt.Sprintf(" (%s: %d leases live, %d expired)", listed(len(l.Top), l.Keys, "keys", "with the most holders"), l.Holders, l.Expired)
	}
	rows := make([][]string, 0, len(l.Top))
	for _, k := range l.Top {
		since := "-"
		if k.Holders > 0 {
			since = fmt.Sprintf("%s (%s ago)", formatTime(k.OldestAcquiredAt), formatAge(k.HeldFor))
		}
		rows = append(rows, []string{k.Namespace, k.Key, itoa(k.Holders), itoa(k.Expired), since})
	}
	printTable(w, title, []string{"NAMESPACE", "KEY", "HOLDERS", "EXPIRED", "OLDEST LIVE LEASE"}, rows)
}

// printRateLimits writes the rate-limited keys.
func printRateLimits(w io.Writer, r *jobstats.RateLimitStats) {
	title := "Rate limits"
	if r.Keys > 0 {
		title += fmt.Sprintf(" (%s: %d with jobs booked ahead)", listed(len(r.Top), r.Keys, "keys", "booked furthest ahead, then the busiest"), r.Throttled)
	}
	rows := make([][]string, 0, len(r.Top))
	for _, l := range r.Top {
		last := "-"
		if !l.LastStart.IsZero() {
			last = formatTime(l.LastStart)
		}
		booked := "-"
		if l.BookedAhead > 0 {
			booked = formatWait(l.BookedAhead)
		}
		rows = append(rows, []string{l.Namespace, l.Key, fmt.Sprintf("%d per %s", l.MaxStarts, formatPeriod(l.Period)),
			itoa(l.StartsInPeriod), last, booked, itoa(l.Admitted), itoa(l.Delayed)})
	}
	printTable(w, title, []string{"NAMESPACE", "KEY", "LIMIT", "IN PERIOD", "LAST START", "BOOKED AHEAD", "ADMITTED", "DELAYED"}, rows)
}

// printSequences writes the sequences with unfinished jobs: the stuck ones
// first.
func printSequences(w io.Writer, s *jobstats.SequenceStats) {
	title := "Sequences"
	if s.Sequences > 0 {
		which := fmt.Sprintf("%d with unfinished jobs", s.Sequences)
		if int64(len(s.Top)) < s.Sequences {
			which = fmt.Sprintf("the %d of %d with unfinished jobs: every stuck one, then the most waiting", len(s.Top), s.Sequences)
		}
		title += fmt.Sprintf(" (%s; %d jobs waiting, %d running; %d held, %d stuck)", which, s.Waiting, s.Running, s.Held, s.Stuck)
	}
	rows := make([][]string, 0, len(s.Top))
	for _, q := range s.Top {
		status := "-"
		switch {
		case q.Stuck && q.Held:
			status = "stuck, held"
		case q.Stuck:
			status = "stuck"
		case q.Held:
			status = "held"
		}
		head, kind, state, errs := "-", "-", "-", "-"
		if q.HeadJobID != 0 {
			head, kind, state, errs = itoa(q.HeadJobID), q.HeadKind, string(q.HeadState), itoa(int64(q.HeadErrors))
		}
		released := "-"
		if !q.ReleasedAt.IsZero() {
			released = fmt.Sprintf("%s (%s ago)", formatTime(q.ReleasedAt), formatAge(q.ReleasedAge))
		}
		rows = append(rows, []string{q.Namespace, q.Key, itoa(q.Width), itoa(q.Waiting), itoa(q.Running), status,
			head, kind, state, errs, released, orDash(truncate(oneLine(q.HeadLastError), 60))})
	}
	printTable(w, title, []string{"NAMESPACE", "KEY", "WIDTH", "WAITING", "RUNNING", "STATUS",
		"HEAD JOB", "KIND", "STATE", "ERRORS", "LAST RELEASE", "LAST ERROR"}, rows)
}

// listed describes a list of shown of total things: "3 keys", or "the 20 of
// 35 keys <order>" when it shows fewer than all.
func listed(shown int, total int64, things, order string) string {
	if int64(shown) >= total {
		return fmt.Sprintf("%d %s", total, things)
	}
	return fmt.Sprintf("the %d of %d %s %s", shown, total, things, order)
}

// formatPeriod prints a rate limit's period without its zero units: "1h",
// "1m30s", "500ms".
func formatPeriod(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// formatWait prints a wait to the millisecond under 10 seconds, else to the
// second.
func formatWait(d time.Duration) string {
	if d < 10*time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

// printOutbox writes the outbox: what waits, since when, what died.
func printOutbox(w io.Writer, o *jobstats.OutboxStats) {
	fmt.Fprintln(w, "Outbox (jobs enqueued, not yet relayed into River's job table)")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "  waiting\t%d\n", o.Depth)
	if o.Depth > 0 {
		fmt.Fprintf(tw, "  oldest\t%s (%s ago)\n", formatTime(o.OldestCreatedAt), formatAge(o.OldestAge))
	} else {
		fmt.Fprint(tw, "  oldest\t-\n")
	}
	if o.Dead > 0 {
		fmt.Fprintf(tw, "  dead\t%d (latest %s)\n", o.Dead, formatTime(o.LastDeadAt))
	} else {
		fmt.Fprint(tw, "  dead\t0\n")
	}
	_ = tw.Flush()
	fmt.Fprintln(w)
	if o.Dead == 0 {
		return
	}

	rows := make([][]string, 0, len(o.LatestDead))
	for _, d := range o.LatestDead {
		rows = append(rows, []string{itoa(d.ID), d.Kind, orDash(d.Queue), formatTime(d.CreatedAt), formatTime(d.DeadAt),
			truncate(oneLine(d.Reason), 80)})
	}
	printTable(w, fmt.Sprintf("Dead outbox rows (the latest %d of %d; all: aftercommit jobs list --dead)", len(o.LatestDead), o.Dead),
		[]string{"ID", "KIND", "QUEUE", "CREATED", "DEAD AT", "REASON"}, rows)
}

// formatAge prints d to the second ("0s" under half a second).
func formatAge(d time.Duration) string { return d.Round(time.Second).String() }

// orDash returns s, or "-" when it is empty.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// printTable writes a titled table whose first column is left-aligned and
// the others right-aligned when they hold numbers; "(none)" when empty.
func printTable(w io.Writer, title string, header []string, rows [][]string) {
	fmt.Fprintln(w, title)
	if len(rows) == 0 {
		fmt.Fprint(w, "  (none)\n\n")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  "+strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, "  "+strings.Join(r, "\t"))
	}
	_ = tw.Flush()
	fmt.Fprintln(w)
}

func itoa[T int | int64](n T) string { return strconv.FormatInt(int64(n), 10) }

// ms prints d in milliseconds, or "-" when no job completed.
func ms(d time.Duration, completed int64) string {
	if completed == 0 {
		return "-"
	}
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 1, 64) + "ms"
}

// statsView is stats --json.
type statsView struct {
	At      time.Time        `json:"at"`
	Kinds   []kindStatsView  `json:"kinds"`
	Queues  []queueDepthView `json:"queues"`
	Stuck   []stuckJobView   `json:"stuck"`
	Failing []failingView    `json:"failing"`
	Outbox  outboxStatsView  `json:"outbox"`
	// EventRelays are the relays of outbox_events to NATS JetStream.
	EventRelays []eventRelayView `json:"event_relays"`

	Locks      lockStatsView      `json:"locks"`
	RateLimits rateLimitStatsView `json:"rate_limits"`
	Sequences  sequenceStatsView  `json:"sequences"`
}

// lockStatsView is the worker locks in stats --json.
type lockStatsView struct {
	Denied  bool          `json:"denied"` // the role may not read job_locks; the rest is zero
	Keys    int64         `json:"keys"`
	Held    int64         `json:"held"`
	Holders int64         `json:"holders"`
	Expired int64         `json:"expired"`
	Top     []lockKeyView `json:"top"`
}

type lockKeyView struct {
	Namespace        string     `json:"namespace"`
	Key              string     `json:"key"`
	Holders          int64      `json:"holders"`
	Expired          int64      `json:"expired"`
	OldestAcquiredAt *time.Time `json:"oldest_acquired_at"` // null when Holders is 0
	HeldForMs        float64    `json:"held_for_ms"`
}

// rateLimitStatsView is the rate limits in stats --json.
type rateLimitStatsView struct {
	Keys      int64           `json:"keys"`
	Throttled int64           `json:"throttled"`
	Top       []rateLimitView `json:"top"`
}

type rateLimitView struct {
	Namespace      string     `json:"namespace"`
	Key            string     `json:"key"`
	MaxStarts      int        `json:"max_starts"`
	PeriodMs       float64    `json:"period_ms"`
	StartsInPeriod int64      `json:"starts_in_period"`
	LastStart      *time.Time `json:"last_start"` // null when no start is logged
	BookedAheadMs  float64    `json:"booked_ahead_ms"`
	Admitted       int64      `json:"admitted"`
	Delayed        int64      `json:"delayed"`
	UpdatedAt      time.Time  `json:"updated_at"`
}

// sequenceStatsView is the sequences in stats --json.
type sequenceStatsView struct {
	Sequences int64          `json:"sequences"`
	Waiting   int64          `json:"waiting"`
	Running   int64          `json:"running"`
	Held      int64          `json:"held"`
	Stuck     int64          `json:"stuck"`
	Top       []sequenceView `json:"top"`
}

type sequenceView struct {
	Namespace     string     `json:"namespace"`
	Key           string     `json:"key"`
	Width         int        `json:"width"`
	Waiting       int64      `json:"waiting"`
	Running       int        `json:"running"`
	HeadJobID     *int64     `json:"head_job_id"` // null, and the head fields empty, when no job is released
	HeadKind      string     `json:"head_kind"`
	HeadState     string     `json:"head_state"`
	HeadAttempt   int        `json:"head_attempt"`
	HeadErrors    int        `json:"head_errors"`
	HeadLastError string     `json:"head_last_error"`
	ReleasedAt    *time.Time `json:"released_at"` // null when never released
	ReleasedAgeMs float64    `json:"released_age_ms"`
	Held          bool       `json:"held"`
	Stuck         bool       `json:"stuck"`
}

// eventRelayView is one relay of outbox_events in stats --json.
type eventRelayView struct {
	Stream             string     `json:"stream"`
	Owner              string     `json:"owner"`
	Active             bool       `json:"active"`
	LastID             int64      `json:"last_id"`
	LastSeq            int64      `json:"last_seq"`
	AckedAt            *time.Time `json:"acked_at"`
	Pending            int64      `json:"pending"`
	OldestPendingAt    *time.Time `json:"oldest_pending_at"`
	OldestPendingAgeMs float64    `json:"oldest_pending_age_ms"`
}

// outboxStatsView is the outbox in stats --json.
type outboxStatsView struct {
	Depth           int64            `json:"depth"`
	OldestCreatedAt *time.Time       `json:"oldest_created_at"` // null when Depth is 0
	OldestAgeMs     float64          `json:"oldest_age_ms"`
	Dead            int64            `json:"dead"`
	LastDeadAt      *time.Time       `json:"last_dead_at"` // null when Dead is 0
	LatestDead      []outboxDeadView `json:"latest_dead"`
}

// outboxDeadView is one of the latest dead outbox rows in stats --json.
type outboxDeadView struct {
	ID        int64           `json:"id"`
	Kind      string          `json:"kind"`
	Queue     string          `json:"queue"` // "" when the row left it to the kind
	Args      json.RawMessage `json:"args"`
	CreatedAt time.Time       `json:"created_at"`
	DeadAt    time.Time       `json:"dead_at"`
	Reason    string          `json:"reason"`
}

type kindStatsView struct {
	Kind              string    `json:"kind"`
	Period            string    `json:"period"`
	Since             time.Time `json:"since"`
	Completed         int64     `json:"completed"`
	Failed            int64     `json:"failed"`
	Discarded         int64     `json:"discarded"`
	Cancelled         int64     `json:"cancelled"`
	RunTimeP50Ms      float64   `json:"run_time_p50_ms"`
	RunTimeP95Ms      float64   `json:"run_time_p95_ms"`
	RunTimeP99Ms      float64   `json:"run_time_p99_ms"`
	QueueLatencyP50Ms float64   `json:"queue_latency_p50_ms"`
	QueueLatencyP95Ms float64   `json:"queue_latency_p95_ms"`
	QueueLatencyP99Ms float64   `json:"queue_latency_p99_ms"`
}

type queueDepthView struct {
	Queue             string    `json:"queue"`
	State             string    `json:"state"`
	Jobs              int64     `json:"jobs"`
	OldestScheduledAt time.Time `json:"oldest_scheduled_at"`
}

type stuckJobView struct {
	ID           int64     `json:"id"`
	Kind         string    `json:"kind"`
	Queue        string    `json:"queue"`
	Attempt      int       `json:"attempt"`
	MaxAttempts  int       `json:"max_attempts"`
	AttemptedAt  time.Time `json:"attempted_at"`
	AttemptedBy  string    `json:"attempted_by"`
	RunningForMs float64   `json:"running_for_ms"`
	TimeoutMs    float64   `json:"timeout_ms"`
}

type failingView struct {
	Kind        string    `json:"kind"`
	JobID       int64     `json:"job_id"`
	State       string    `json:"state"`
	Attempt     int       `json:"attempt"`
	MaxAttempts int       `json:"max_attempts"`
	ErrorAt     time.Time `json:"error_at"`
	Error       string    `json:"error"`
}

func msf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func newStatsView(r *jobstats.Report) statsView {
	v := statsView{At: r.At.UTC(), Kinds: []kindStatsView{}, Queues: []queueDepthView{}, Stuck: []stuckJobView{}, Failing: []failingView{}}
	for _, k := range r.Kinds {
		v.Kinds = append(v.Kinds, kindStatsView{
			Kind: k.Kind, Period: string(k.Period), Since: k.Since.UTC(),
			Completed: k.Completed, Failed: k.Failed, Discarded: k.Discarded, Cancelled: k.Cancelled,
			RunTimeP50Ms: msf(k.RunTimeP50), RunTimeP95Ms: msf(k.RunTimeP95), RunTimeP99Ms: msf(k.RunTimeP99),
			QueueLatencyP50Ms: msf(k.QueueLatencyP50), QueueLatencyP95Ms: msf(k.QueueLatencyP95), QueueLatencyP99Ms: msf(k.QueueLatencyP99),
		})
	}
	for _, q := range r.Queues {
		v.Queues = append(v.Queues, queueDepthView{Queue: q.Queue, State: string(q.State), Jobs: q.Jobs, OldestScheduledAt: q.OldestScheduledAt.UTC()})
	}
	for _, s := range r.Stuck {
		v.Stuck = append(v.Stuck, stuckJobView{ID: s.ID, Kind: s.Kind, Queue: s.Queue, Attempt: s.Attempt, MaxAttempts: s.MaxAttempts,
			AttemptedAt: s.AttemptedAt.UTC(), AttemptedBy: s.AttemptedBy, RunningForMs: msf(s.RunningFor), TimeoutMs: msf(s.Timeout)})
	}
	for _, f := range r.Failing {
		v.Failing = append(v.Failing, failingView{Kind: f.Kind, JobID: f.JobID, State: string(f.State), Attempt: f.Attempt,
			MaxAttempts: f.MaxAttempts, ErrorAt: f.ErrorAt.UTC(), Error: f.Error})
	}
	v.EventRelays = make([]eventRelayView, 0, len(r.EventRelays))
	for _, er := range r.EventRelays {
		ev := eventRelayView{Stream: er.Stream, Owner: er.Owner, Active: er.Active, LastID: er.LastID, LastSeq: er.LastSeq,
			Pending: er.Pending, OldestPendingAgeMs: msf(er.OldestPendingAge)}
		if !er.AckedAt.IsZero() {
			ev.AckedAt = utcPtr(&er.AckedAt)
		}
		if !er.OldestPendingAt.IsZero() {
			ev.OldestPendingAt = utcPtr(&er.OldestPendingAt)
		}
		v.EventRelays = append(v.EventRelays, ev)
	}
	o := r.Outbox
	v.Outbox = outboxStatsView{Depth: o.Depth, OldestAgeMs: msf(o.OldestAge), Dead: o.Dead, LatestDead: []outboxDeadView{}}
	if !o.OldestCreatedAt.IsZero() {
		v.Outbox.OldestCreatedAt = utcPtr(&o.OldestCreatedAt)
	}
	if !o.LastDeadAt.IsZero() {
		v.Outbox.LastDeadAt = utcPtr(&o.LastDeadAt)
	}
	for _, d := range o.LatestDead {
		v.Outbox.LatestDead = append(v.Outbox.LatestDead, outboxDeadView{ID: d.ID, Kind: d.Kind, Queue: d.Queue, Args: rawOrNull(d.Args),
			CreatedAt: d.CreatedAt.UTC(), DeadAt: d.DeadAt.UTC(), Reason: d.Reason})
	}

	l := r.Locks
	v.Locks = lockStatsView{Denied: l.Denied, Keys: l.Keys, Held: l.Held, Holders: l.Holders, Expired: l.Expired, Top: []lockKeyView{}}
	for _, k := range l.Top {
		v.Locks.Top = append(v.Locks.Top, lockKeyView{Namespace: k.Namespace, Key: k.Key, Holders: k.Holders, Expired: k.Expired,
			OldestAcquiredAt: utcOrNull(k.OldestAcquiredAt), HeldForMs: msf(k.HeldFor)})
	}
	v.RateLimits = rateLimitStatsView{Keys: r.RateLimits.Keys, Throttled: r.RateLimits.Throttled, Top: []rateLimitView{}}
	for _, l := range r.RateLimits.Top {
		v.RateLimits.Top = append(v.RateLimits.Top, rateLimitView{Namespace: l.Namespace, Key: l.Key, MaxStarts: l.MaxStarts,
			PeriodMs: msf(l.Period), StartsInPeriod: l.StartsInPeriod, LastStart: utcOrNull(l.LastStart),
			BookedAheadMs: msf(l.BookedAhead), Admitted: l.Admitted, Delayed: l.Delayed, UpdatedAt: l.UpdatedAt.UTC()})
	}
	s := r.Sequences
	v.Sequences = sequenceStatsView{Sequences: s.Sequences, Waiting: s.Waiting, Running: s.Running, Held: s.Held, Stuck: s.Stuck,
		Top: []sequenceView{}}
	for _, q := range s.Top {
		sv := sequenceView{Namespace: q.Namespace, Key: q.Key, Width: q.Width, Waiting: q.Waiting, Running: q.Running,
			HeadKind: q.HeadKind, HeadState: string(q.HeadState), HeadAttempt: q.HeadAttempt, HeadErrors: q.HeadErrors,
			HeadLastError: q.HeadLastError, ReleasedAt: utcOrNull(q.ReleasedAt), ReleasedAgeMs: msf(q.ReleasedAge),
			Held: q.Held, Stuck: q.Stuck}
		if q.HeadJobID != 0 {
			id := q.HeadJobID
			sv.HeadJobID = &id
		}
		v.Sequences.Top = append(v.Sequences.Top, sv)
	}
	return v
}

// utcOrNull is t in UTC, or nil (JSON null) when t is zero.
func utcOrNull(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return utcPtr(&t)
}
