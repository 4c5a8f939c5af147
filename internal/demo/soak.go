package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/aftercommit/aftercommit/donations"
	"github.com/aftercommit/aftercommit/internal/app"
	"github.com/aftercommit/aftercommit/inventory"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/reporting"
)

// Soak plays the demo scenario round after round on one database, for as
// long as its caller likes: the load of `aftercommit bench --soak`. Each
// round seeds rows of its own (a tag per round) and plays the donations,
// the opens and clicks, the flash sale and the bulk import of car users,
// at the Config's Scale; the jobs are left to workers the caller runs
// against the database (as with Config.ExternalWorkers).
//
// A round's invariants are the demo's, checked once its jobs have settled
// (CheckSettled) and, for the rounds not yet found to hold, after the
// queues drained at the end (Check). Rounds found to hold are released, so
// that a long soak keeps only the rounds still in flight.
type Soak struct {
	cfg  Config
	pool *pgxpool.Pool
	base *run // carries the services and the drain; plays no round
	tag  string

	mu      sync.Mutex
	rounds  int
	pending []*soakRound
	// held[name] counts the rounds in which the invariant held; failed
	// keeps the first failure of each invariant.
	held   map[string]int
	failed map[string]string
	names  []string
	done   int // rounds checked for good
}

type soakRound struct {
	n     int
	r     *run
	ended time.Time
}

// NewSoak prepares a soak on pool, whose database must be migrated. Only
// Scale, Concurrency, Seed, Schema, Logger and DrainTimeout of cfg are
// used; Concurrency defaults to ConcurrencyDefault.
func NewSoak(pool *pgxpool.Pool, cfg Config) (*Soak, error) {
	if cfg.Scale <= 0 || cfg.Scale > ScaleMax || math.IsNaN(cfg.Scale) {
		return nil, fmt.Errorf("%w: Scale must be in (0, %g], got %g", ErrInvalidConfig, ScaleMax, cfg.Scale)
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = DrainTimeoutDefault
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = ConcurrencyDefault
	}
	if cfg.Concurrency < 1 || cfg.Concurrency > 256 || cfg.DrainTimeout < 0 {
		return nil, fmt.Errorf("%w: Concurrency must be in 1…256 and DrainTimeout not negative", ErrInvalidConfig)
	}
	if cfg.Seed == 0 {
		cfg.Seed = rand.Uint64()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Out, cfg.Bars, cfg.ExternalWorkers = io.Discard, false, true

	reg := app.Registry(pool, nil)
	if err := reg.Err(); err != nil {
		return nil, fmt.Errorf("demo: the registry is invalid: %w", err)
	}
	client, err := jobs.NewClient(pool, reg, &jobs.ClientConfig{Queues: []string{}, Schema: cfg.Schema, Logger: cfg.Logger})
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	base := &run{cfg: cfg, pool: pool, summary: &Summary{}}
	if base.ob, err = jobs.NewOutbox(pool, client, reg, nil); err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	base.donations = donations.NewService(pool, base.ob)
	if base.inventory, err = inventory.NewService(pool, base.ob, nil); err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	base.reporting = reporting.NewService(pool, base.ob)
	tag := strconv.FormatUint(cfg.Seed%1_000_000_007, 36) + strconv.FormatInt(time.Now().UnixMilli()%1_000_000, 36)
	return &Soak{cfg: cfg, pool: pool, base: base, tag: tag, held: map[string]int{}, failed: map[string]string{}}, nil
}

// Round plays one round and returns its phases. A round that fails is not
// checked: its error is the caller's to count (an enqueue error is one).
func (s *Soak) Round(ctx context.Context) ([]Phase, error) {
	s.mu.Lock()
	s.rounds++
	n := s.rounds
	s.mu.Unlock()

	seed := s.cfg.Seed + uint64(n)*0x9e3779b97f4a7c15
	r := &run{
		cfg:       s.cfg,
		pool:      s.pool,
		tag:       s.tag + "r" + strconv.Itoa(n),
		sizes:     sizesAt(s.cfg.Scale),
		rng:       rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		summary:   &Summary{Scale: s.cfg.Scale, Seed: seed, Started: time.Now()},
		ob:        s.base.ob,
		donations: s.base.donations,
		inventory: s.base.inventory,
		reporting: s.base.reporting,
	}
	r.summary.Tag = r.tag
	for _, p := range []struct {
		name string
		fn   func(context.Context) error
	}{
		{"seed users, fundraisers and emails", r.seedDonations},
		{"donations", r.playDonations},
		{"email opens and clicks", r.playTracking},
		{"flash sale", r.playFlashSale},
		{"bulk import of car users", r.playCarUsers},
	} {
		if err := p.fn(ctx); err != nil {
			return r.summary.Phases, fmt.Errorf("demo: round %d: %s: %w", n, p.name, err)
		}
	}
	s.mu.Lock()
	s.pending = append(s.pending, &soakRound{n: n, r: r, ended: time.Now()})
	s.mu.Unlock()
	return r.summary.Phases, nil
}

// settledSQL counts the jobs created up to $1 that are still to run now.
const settledSQL = `
SELECT count(*) FROM river_job
 WHERE created_at <= $1
   AND (state IN ('available', 'running', 'retryable', 'pending') OR (state = 'scheduled' AND scheduled_at <= now()))`

// CheckSettled checks the rounds that ended at least grace ago and whose
// jobs, and every job created up to grace after the round ended (the jobs
// its jobs enqueue), have finished. The rounds whose invariants all hold
// are released; the others are kept for Check, which alone declares a
// failure (after the queues drained). It returns how many rounds it
// released.
func (s *Soak) CheckSettled(ctx context.Context, grace time.Duration) (int, error) {
	s.mu.Lock()
	rounds := append([]*soakRound(nil), s.pending...)
	s.mu.Unlock()
	released := 0
	for _, sr := range rounds {
		horizon := sr.ended.Add(grace)
		if time.Now().Before(horizon) {
			break
		}
		var left int64
		if err := s.pool.QueryRow(ctx, settledSQL, horizon).Scan(&left); err != nil {
			return released, fmt.Errorf("demo: waiting for round %d: %w", sr.n, err)
		}
		if left > 0 {
			break // later rounds ended later
		}
		ok, err := s.checkRound(ctx, sr, false)
		if err != nil {
			return released, err
		}
		if ok {
			released++
		}
	}
	return released, nil
}

// checkRound checks sr's invariants. When final, or when they all hold,
// the round is counted and released.
func (s *Soak) checkRound(ctx context.Context, sr *soakRound, final bool) (bool, error) {
	sr.r.summary.Invariants = nil
	if err := sr.r.check(ctx); err != nil {
		return false, err
	}
	ok := sr.r.summary.OK()
	if !ok && !final {
		return false, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, inv := range sr.r.summary.Invariants {
		if _, seen := s.held[inv.Name]; !seen {
			s.names = append(s.names, inv.Name)
			s.held[inv.Name] = 0
		}
		if inv.OK {
			s.held[inv.Name]++
		} else if _, ok := s.failed[inv.Name]; !ok {
			s.failed[inv.Name] = fmt.Sprintf("round %d (tag %s): got %s, want %s", sr.n, sr.r.tag, inv.Got, inv.Want)
		}
	}
	for i, p := range s.pending {
		if p == sr {
			s.pending = append(s.pending[:i], s.pending[i+1:]...)
			break
		}
	}
	s.done++
	return ok, nil
}

// ErrNotDrained is wrapped by Check's error when the queues did not drain
// within the DrainTimeout.
var ErrNotDrained = errors.New("demo: the queues did not drain")

// Check waits for the queues to drain (Config.DrainTimeout), checks every
// round not released yet, and returns the invariants over all the rounds
// played: one per invariant of the demo, held if it held in every round
// (Got counts the rounds where it held; a failure names its first round).
func (s *Soak) Check(ctx context.Context) ([]Invariant, error) {
	if err := s.base.drain(ctx); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotDrained, err)
	}
	s.mu.Lock()
	rounds := append([]*soakRound(nil), s.pending...)
	s.mu.Unlock()
	for _, sr := range rounds {
		if _, err := s.checkRound(ctx, sr, true); err != nil {
			return nil, err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Invariant, 0, len(s.names))
	for _, name := range s.names {
		inv := Invariant{Name: name, Want: fmt.Sprintf("held in %d rounds", s.done), Got: fmt.Sprintf("held in %d rounds", s.held[name])}
		inv.OK = s.held[name] == s.done
		if f, bad := s.failed[name]; bad {
			inv.Got += "; first failure " + f
		}
		out = append(out, inv)
	}
	return out, nil
}

// Rounds returns how many rounds were started and how many were checked
// (found to hold, or checked for good by Check).
func (s *Soak) Rounds() (started, checked int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rounds, s.done
}
