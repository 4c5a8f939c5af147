package jobs

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
)

// PingKind is the River kind of PingArgs. It never changes.
const PingKind = "aftercommit.ping"

// PingMaxSleep caps PingArgs.SleepMS.
const PingMaxSleep = time.Minute

// PingMaxFailAttempts is the most PingArgs.FailAttempts.
const PingMaxFailAttempts = 25

// PingFailRetry is when a ping that failed on purpose is retried.
const PingFailRetry = 100 * time.Millisecond

// ErrPingSleepOutOfRange is returned (wrapped in river.JobCancel) for a ping
// that asks to sleep less than zero or longer than PingMaxSleep.
var ErrPingSleepOutOfRange = errors.New("jobs: ping sleep must be between 0 and 60000 ms")

// PingArgs asks a worker to mark a row of the pings table as pinged.
type PingArgs struct {
	// PingID is the pings row to mark; 0 means a no-op ping that touches no
	// row (used to measure the queue alone). Required; negative is invalid.
	PingID int64 `json:"ping_id" jobs:"required"`
	// SleepMS makes the worker wait this long first, to simulate slow work
	// in tests of shutdown and crashes. At most PingMaxSleep.
	SleepMS int `json:"sleep_ms,omitempty"`
	// RateKey, when set, rate limits pings of that key to RateLimit starts
	// in any window of RatePeriodMS milliseconds, across every process
	// (RateLimit): a way to watch a limiter at work, from SQL too:
	//
	//	SELECT aftercommit_enqueue('aftercommit.ping',
	//	  '{"ping_id": 0, "rate_key": "smoke", "rate_limit": 10, "rate_period_ms": 1000}');
	RateKey string `json:"rate_key,omitempty"`
	// RateLimit is the most starts of RateKey per RatePeriodMS, 1 to
	// RateLimitMax. Only with RateKey.
	RateLimit int `json:"rate_limit,omitempty"`
	// RatePeriodMS is the window of RateLimit, in milliseconds. Only with
	// RateKey.
	RatePeriodMS int `json:"rate_period_ms,omitempty"`
	// SeqKey, when set, puts the ping in the sequence of that key
	// (Sequence, namespace "aftercommit.ping"): pings of one key run one at
	// a time, in the order their transactions committed.
	//
	//	SELECT aftercommit_enqueue('aftercommit.ping', '{"ping_id": 0, "seq_key": "smoke"}');
	SeqKey string `json:"seq_key,omitempty"`
	// SeqContinue makes a failed attempt release the ping's sequence
	// (SequenceContinue) instead of holding it (SequenceHold). Only with
	// SeqKey.
	SeqContinue bool `json:"seq_continue,omitempty"`
	// FailAttempts makes the first FailAttempts attempts of the ping fail
	// (retried after PingFailRetry), 0 to PingMaxFailAttempts: a way to
	// watch retries, a held sequence or a discard (with max_attempts).
	FailAttempts int `json:"fail_attempts,omitempty"`
}

// Kind implements river.JobArgs.
func (PingArgs) Kind() string { return PingKind }

// Validate implements ArgsValidator: PingID is 0 (a no-op) or a row's ID,
// never negative, and SleepMS is within PingMaxSleep.
func (a PingArgs) Validate() error {
	if a.PingID < 0 {
		return &FieldError{Field: "ping_id", Reason: fmt.Sprintf("must be a row's ID, or 0 for a no-op ping, got %d", a.PingID)}
	}
	if sleep := time.Duration(a.SleepMS) * time.Millisecond; sleep < 0 || sleep > PingMaxSleep {
		return &FieldError{Field: "sleep_ms", Reason: fmt.Sprintf("must be between 0 and %d, got %d", PingMaxSleep/time.Millisecond, a.SleepMS),
			Err: ErrPingSleepOutOfRange}
	}
	if len(a.SeqKey) > SequenceNameMax {
		return &FieldError{Field: "seq_key", Reason: fmt.Sprintf("must be at most %d bytes, got %d", SequenceNameMax, len(a.SeqKey))}
	}
	if a.SeqKey == "" && a.SeqContinue {
		return &FieldError{Field: "seq_key", Reason: "must be set when seq_continue is"}
	}
	if a.FailAttempts < 0 || a.FailAttempts > PingMaxFailAttempts {
		return &FieldError{Field: "fail_attempts", Reason: fmt.Sprintf("must be between 0 and %d, got %d", PingMaxFailAttempts, a.FailAttempts)}
	}
	if a.RateKey == "" {
		if a.RateLimit != 0 || a.RatePeriodMS != 0 {
			return &FieldError{Field: "rate_key", Reason: "must be set when rate_limit or rate_period_ms is"}
		}
		return nil
	}
	if a.RateLimit < 1 || a.RateLimit > RateLimitMax {
		return &FieldError{Field: "rate_limit", Reason: fmt.Sprintf("must be between 1 and %d, got %d", RateLimitMax, a.RateLimit), Err: ErrRateLimitInvalid}
	}
	if period := time.Duration(a.RatePeriodMS) * time.Millisecond; period < RatePeriodMin || period > RatePeriodMax {
		return &FieldError{Field: "rate_period_ms", Reason: fmt.Sprintf("must be between %d and %d, got %d",
			RatePeriodMin/time.Millisecond, RatePeriodMax/time.Millisecond, a.RatePeriodMS), Err: ErrRateLimitInvalid}
	}
	return nil
}

// PingOutcome is recorded as the job's output (metadata "output").
type PingOutcome struct {
	// Result is "pinged", "noop" or "not_needed" (the row no longer exists).
	Result string `json:"result"`
}

// PingWorker works PingArgs.
type PingWorker struct {
	river.WorkerDefaults[PingArgs]

	// Pool is the database the pings table lives in.
	Pool *pgxpool.Pool
}

// RegisterPing registers the ping kind on River's default queue.
func RegisterPing(reg *Registry, pool *pgxpool.Pool) {
	AddWorker(reg, river.QueueDefault, &PingWorker{Pool: pool})
}

// AddPingWorker registers a PingWorker on workers, for a River client built
// without a Registry.
func AddPingWorker(workers *river.Workers, pool *pgxpool.Pool) {
	river.AddWorker(workers, &PingWorker{Pool: pool})
}

// RateLimitFor implements RateLimiter: a ping with a RateKey is limited to
// RateLimit starts per RatePeriodMS.
func (w *PingWorker) RateLimitFor(_ context.Context, job *river.Job[PingArgs]) (RateLimit, error) {
	a := job.Args
	if a.RateKey == "" {
		return RateLimit{}, nil
	}
	return RateLimit{Key: a.RateKey, Limit: a.RateLimit, Period: time.Duration(a.RatePeriodMS) * time.Millisecond}, nil
}

// SequenceFor puts a ping with a SeqKey in its sequence.
func (w *PingWorker) SequenceFor(args PingArgs) Sequence {
	seq := Sequence{Key: args.SeqKey}
	if args.SeqContinue {
		seq.OnFailure = SequenceContinue
	}
	return seq
}

// NextRetry retries a ping that fails on purpose (FailAttempts) after
// PingFailRetry; other failures take the client's retry policy.
func (w *PingWorker) NextRetry(job *river.Job[PingArgs]) time.Time {
	if job.Args.FailAttempts > 0 {
		return time.Now().Add(PingFailRetry)
	}
	return time.Time{}
}

// ErrPingFailedOnPurpose is the error of a ping attempt that FailAttempts
// makes fail.
var ErrPingFailedOnPurpose = errors.New("jobs: ping failed on purpose (fail_attempts)")

// Work marks the ping and completes the job in one transaction.
func (w *PingWorker) Work(ctx context.Context, job *river.Job[PingArgs]) error {
	if job.Attempt <= job.Args.FailAttempts {
		return fmt.Errorf("%w: attempt %d of the first %d", ErrPingFailedOnPurpose, job.Attempt, job.Args.FailAttempts)
	}
	sleep := time.Duration(job.Args.SleepMS) * time.Millisecond
	if sleep > PingMaxSleep || sleep < 0 {
		return river.JobCancel(fmt.Errorf("%w, got %d ms", ErrPingSleepOutOfRange, job.Args.SleepMS))
	}
	if sleep > 0 {
		timer := time.NewTimer(sleep)
		select {
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		case <-timer.C:
		}
	}
	if job.Args.PingID == 0 {
		return river.RecordOutput(ctx, PingOutcome{Result: "noop"})
	}

	return pgx.BeginFunc(ctx, w.Pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, pingMarkSQL, job.Args.PingID)
		if err != nil {
			return fmt.Errorf("marking ping %d: %w", job.Args.PingID, err)
		}
		outcome := PingOutcome{Result: "pinged"}
		if tag.RowsAffected() == 0 {
			outcome.Result = "not_needed"
		}
		return CompleteTx(ctx, tx, job, outcome)
	})
}

const pingMarkSQL = `UPDATE pings SET pinged_at = now(), ping_count = ping_count + 1 WHERE id = $1`
