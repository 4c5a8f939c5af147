package jobs

import (
	"sync"
	"time"
)

// rateLeaseAskMin is the fewest tokens a process asks for in a lease.
const rateLeaseAskMin = 8

// rateLeaseShortest is the shortest lease a process asks for: River fetches
// a queue's jobs every few milliseconds (FetchCooldownDefault), all with
// the fetch's attempted_at, so a shorter lease would seldom cover one.
// Keys with a period under twice this are decided start by start.
const rateLeaseShortest = 20 * time.Millisecond

// rateLeaseQuiet is how many lease lengths a process asks for no lease of a
// key after one went unused.
const rateLeaseQuiet = 20

// rateLeaseKeysMax bounds the keys a process remembers; past it, keys
// quiet for two periods are forgotten.
const rateLeaseKeysMax = 10_000

// rateLeaseLen is how long a lease of a key with period lasts: its tokens
// are for starts in [t0, t0 + rateLeaseLen]. The database grants the same
// (job_rate_admit_many, migration 0024).
func rateLeaseLen(period time.Duration) time.Duration {
	return min(period/2, time.Second)
}

// rateKey names a rate-limited key.
type rateKey struct{ namespace, key string }

// rateLease is what a process knows of one key: its lease, if any, and
// when it last decided a start of it.
type rateLease struct {
	limit  int32
	period time.Duration
	// The lease: left tokens for starts with an attempted_at in
	// [from, until] (the database's clock); used were spent.
	from, until time.Time
	left        int
	granted     int       // the lease's tokens
	quietUntil  time.Time // a lease went unused: none asked for before
	asking      bool      // a decision that asks for a lease is out
	lastAt      time.Time // the latest start of the key decided here
	// The starts of the key here in the lease-length interval from
	// seenSince, and in the one before it: what a lease should cover.
	seen, seenBefore int
	seenSince        time.Time
}

// count adds a start at at to the key's demand.
func (e *rateLease) count(at time.Time) {
	if at.After(e.lastAt) {
		e.lastAt = at
	}
	if l := rateLeaseLen(e.period); at.Sub(e.seenSince) >= l {
		e.seenBefore = e.seen
		if at.Sub(e.seenSince) >= 2*l {
			e.seenBefore = 0
		}
		e.seen, e.seenSince = 0, at
	}
	e.seen++
}

// rateLeases are a process's leases of rate-limited keys: a key that
// starts often here gets a lease of tokens from the database (see
// migration 0024), and the process admits its next starts itself, without
// a statement each. The database logs a lease as its tokens spent at both
// ends of its interval, so the limit holds whether the tokens are used or
// not; a process that dies loses them.
type rateLeases struct {
	mu   sync.Mutex
	keys map[rateKey]*rateLease
}

// take admits a start at at (a job's attempted_at) of key under limit per
// period with a token of the key's lease, and reports true. Otherwise it
// returns how many tokens the decision should ask a lease for: none unless
// the key started here less than a lease's length ago (it is busy here),
// and no lease is being asked for already.
func (l *rateLeases) take(key rateKey, limit int32, period time.Duration, at time.Time) (bool, int32) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.keys[key]
	if e == nil || e.limit != limit || e.period != period {
		return false, 0
	}
	if e.left > 0 && !at.Before(e.from) && !at.After(e.until) {
		e.left--
		e.count(at)
		return true, 0
	}
	if e.granted > 0 && e.left == e.granted && at.After(e.until) {
		// Not one token of the last lease was used (the starts here came
		// outside it: River's fetches further apart than a lease lasts):
		// the database decides each start for a while.
		e.quietUntil, e.granted = at.Add(rateLeaseQuiet*rateLeaseLen(period)), 0
	}
	if e.asking || at.Before(e.quietUntil) || at.Sub(e.lastAt) >= rateLeaseLen(period) || rateLeaseLen(period) < rateLeaseShortest {
		return false, 0
	}
	e.asking = true
	// Twice the starts of the last lease length: unused tokens are lost,
	// too few send the rest to the database.
	return false, int32(min(max(2*max(e.seen, e.seenBefore), rateLeaseAskMin), RateLimitMax)) //nolint:gosec // at most RateLimitMax
}

// note records the decision d of r (ok: decided; else it failed) and the
// lease it brought.
func (l *rateLeases) note(key rateKey, r *rateRequest, d rateDecision, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.keys[key]
	if e == nil || e.limit != r.limit || e.period != r.period {
		if l.keys == nil {
			l.keys = make(map[rateKey]*rateLease)
		}
		if len(l.keys) >= rateLeaseKeysMax {
			l.forget(r.at)
		}
		e = &rateLease{limit: r.limit, period: r.period}
		l.keys[key] = e
	}
	if r.lease > 0 {
		e.asking = false
	}
	if !ok {
		return
	}
	if d.admitted {
		e.count(d.startedAt)
	}
	if d.leaseTokens > 0 && d.leaseFrom.After(e.from) {
		e.from, e.until, e.left, e.granted = d.leaseFrom, d.leaseUntil, d.leaseTokens, d.leaseTokens
	}
}

// forget drops the keys that neither started nor held a lease in the two
// periods before now (the database's clock).
func (l *rateLeases) forget(now time.Time) {
	for k, e := range l.keys {
		if now.Sub(e.lastAt) > 2*e.period && now.Sub(e.until) > 2*e.period {
			delete(l.keys, k)
		}
	}
}
