package inventory

import (
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
)

// Domain is the name the package registers its queues under.
const Domain = "inventory"

// Queue names (River names are "inventory_<name>").
const (
	// QueueCheckout runs checkout completions and expiries: buyers and
	// stock wait on them.
	QueueCheckout = Domain + "_checkout"
	// QueueMaintenance runs the claim pruner, the safety net: never urgent.
	QueueMaintenance = Domain + "_maintenance"
)

// Defaults of Config.
const (
	// ClaimTTLDefault is how long a new checkout holds its units.
	ClaimTTLDefault = 10 * time.Minute
	// PaymentRetryTTLDefault is how long a checkout whose payment failed
	// keeps its units, from the failure, so the buyer can fix their card.
	PaymentRetryTTLDefault = 30 * time.Minute
	// LockTimeoutDefault bounds the wait for a row lock in every
	// transaction of the domain.
	LockTimeoutDefault = 2 * time.Second
	// StatementTimeoutDefault bounds every statement of the domain.
	StatementTimeoutDefault = 5 * time.Second
	// CompletionConcurrencyDefault is how many CompleteCheckout jobs may run
	// at once across every worker process.
	CompletionConcurrencyDefault = 4
	// PruneIntervalDefault is how often PruneExpiredClaims runs.
	PruneIntervalDefault = time.Minute
	// PruneBatchSizeDefault is how many claims one prune statement deletes.
	PruneBatchSizeDefault = 1000
)

// CompletionLockNamespace is the jobs.Lock namespace of the checkout
// completion semaphore (one key, "global", with CompletionConcurrency
// permits).
const CompletionLockNamespace = "inventory.checkout_completion"

// Config tunes the domain. A nil *Config takes every default. The service
// and the workers should be given the same Config.
type Config struct {
	// ClaimTTL is how long a new checkout holds its units before it
	// expires. Defaults to ClaimTTLDefault.
	ClaimTTL time.Duration
	// PaymentRetryTTL is how long, from a failed payment, the checkout
	// keeps its units. Defaults to PaymentRetryTTLDefault.
	PaymentRetryTTL time.Duration
	// LockTimeout is every transaction's lock_timeout; a wait longer than
	// that fails with ErrBusy. Defaults to LockTimeoutDefault.
	LockTimeout time.Duration
	// StatementTimeout is every transaction's statement_timeout; a longer
	// statement fails with ErrBusy. Defaults to StatementTimeoutDefault.
	StatementTimeout time.Duration
	// CompletionConcurrency is how many CompleteCheckout jobs may run at
	// once across every worker process (a jobs.Lock semaphore). Defaults to
	// CompletionConcurrencyDefault.
	CompletionConcurrency int
	// PruneInterval is how often the leader enqueues PruneExpiredClaims.
	// Defaults to PruneIntervalDefault.
	PruneInterval time.Duration
	// PruneBatchSize is how many expired claims one prune statement
	// deletes; a run repeats it until fewer are left. Defaults to
	// PruneBatchSizeDefault.
	PruneBatchSize int
}

// WithDefaults returns a copy of c with every zero field set to its
// default. It accepts a nil receiver.
func (c *Config) WithDefaults() Config {
	var out Config
	if c != nil {
		out = *c
	}
	if out.ClaimTTL == 0 {
		out.ClaimTTL = ClaimTTLDefault
	}
	if out.PaymentRetryTTL == 0 {
		out.PaymentRetryTTL = PaymentRetryTTLDefault
	}
	if out.LockTimeout == 0 {
		out.LockTimeout = LockTimeoutDefault
	}
	if out.StatementTimeout == 0 {
		out.StatementTimeout = StatementTimeoutDefault
	}
	if out.CompletionConcurrency == 0 {
		out.CompletionConcurrency = CompletionConcurrencyDefault
	}
	if out.PruneInterval == 0 {
		out.PruneInterval = PruneIntervalDefault
	}
	if out.PruneBatchSize == 0 {
		out.PruneBatchSize = PruneBatchSizeDefault
	}
	return out
}

// txOptions begins a transaction with c's lock and statement timeouts, in
// the BEGIN's round trip.
func (c Config) txOptions() pgx.TxOptions {
	return pgx.TxOptions{BeginQuery: fmt.Sprintf(beginSQLFormat, c.LockTimeout.Milliseconds(), c.StatementTimeout.Milliseconds())}
}

// validate reports a field out of range; c has its defaults.
func (c Config) validate() error {
	var errs []error
	for _, f := range []struct {
		name string
		d    time.Duration
	}{
		{"ClaimTTL", c.ClaimTTL}, {"PaymentRetryTTL", c.PaymentRetryTTL},
		{"LockTimeout", c.LockTimeout}, {"StatementTimeout", c.StatementTimeout},
		{"PruneInterval", c.PruneInterval},
	} {
		if f.d < time.Millisecond {
			errs = append(errs, fmt.Errorf("inventory: Config.%s must be at least 1ms, got %s", f.name, f.d))
		}
	}
	if c.CompletionConcurrency < 1 || c.CompletionConcurrency > jobs.LockPermitsMax {
		errs = append(errs, fmt.Errorf("inventory: Config.CompletionConcurrency must be in 1…%d, got %d", jobs.LockPermitsMax, c.CompletionConcurrency))
	}
	if c.PruneBatchSize < 1 {
		errs = append(errs, fmt.Errorf("inventory: Config.PruneBatchSize must be at least 1, got %d", c.PruneBatchSize))
	}
	return errors.Join(errs...)
}

// Register declares the inventory domain on reg: its queues, its workers and
// the periodic claim pruner. pool is the database the workers read and
// write; cfg may be nil for the defaults. It panics on a Config out of
// range: a programming error, found at startup (NewService returns the same
// check as an error).
func Register(reg *jobs.Registry, pool *pgxpool.Pool, cfg *Config) {
	c := cfg.WithDefaults()
	if err := c.validate(); err != nil {
		panic(err)
	}
	reg.AddQueue(Domain, "checkout", 100, nil)
	reg.AddQueue(Domain, "maintenance", -5, nil)
	jobs.AddWorker(reg, QueueCheckout, &CompleteCheckoutWorker{pool: pool, cfg: c})
	jobs.AddWorker(reg, QueueCheckout, &ExpireCheckoutWorker{pool: pool, cfg: c})
	jobs.AddWorker(reg, QueueMaintenance, &PruneExpiredClaimsWorker{pool: pool, cfg: c})
	reg.AddPeriodic(river.NewPeriodicJob(river.PeriodicInterval(c.PruneInterval),
		func() (river.JobArgs, *river.InsertOpts) {
			return PruneExpiredClaimsArgs{}, &river.InsertOpts{Queue: QueueMaintenance}
		},
		&river.PeriodicJobOpts{ID: PruneExpiredClaimsKind}))
}

// Service is the domain's API for the application: checkouts and their
// claims, each change in its own outbox transaction.
type Service struct {
	pool *pgxpool.Pool
	ob   *outbox.Outbox
	cfg  Config
}

// NewService returns the domain's service. ob must be built with
// jobs.NewOutbox from a registry that Register filled; cfg may be nil for
// the defaults. It fails when a field of cfg is out of range.
func NewService(pool *pgxpool.Pool, ob *outbox.Outbox, cfg *Config) (*Service, error) {
	c := cfg.WithDefaults()
	if err := c.validate(); err != nil {
		return nil, err
	}
	return &Service{pool: pool, ob: ob, cfg: c}, nil
}
