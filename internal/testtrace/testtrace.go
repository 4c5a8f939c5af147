// Package testtrace counts the statements and round trips a pgx pool sends,
// so tests can assert "one INSERT" or "one round trip" instead of assuming it.
package testtrace

import (
	"context"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
)

// Tracer is a pgx QueryTracer and BatchTracer. Set it as ConnConfig.Tracer.
// It is safe for concurrent use.
type Tracer struct {
	mu      sync.Mutex
	trips   [][]string
	batches map[*pgx.Conn]int // index into trips of the batch in flight
}

var (
	_ pgx.QueryTracer = (*Tracer)(nil)
	_ pgx.BatchTracer = (*Tracer)(nil)
)

// TraceQueryStart records a query as a round trip of its own.
func (t *Tracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.trips = append(t.trips, []string{data.SQL})
	return ctx
}

// TraceQueryEnd does nothing.
func (t *Tracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// TraceBatchStart opens a round trip that the batch's queries join.
func (t *Tracer) TraceBatchStart(ctx context.Context, conn *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.batches == nil {
		t.batches = make(map[*pgx.Conn]int)
	}
	t.batches[conn] = len(t.trips)
	t.trips = append(t.trips, nil)
	return ctx
}

// TraceBatchQuery adds a query to the batch in flight on conn.
func (t *Tracer) TraceBatchQuery(_ context.Context, conn *pgx.Conn, data pgx.TraceBatchQueryData) {
	t.mu.Lock()
	defer t.mu.Unlock()
	i, ok := t.batches[conn]
	if !ok {
		t.trips = append(t.trips, []string{data.SQL})
		return
	}
	t.trips[i] = append(t.trips[i], data.SQL)
}

// TraceBatchEnd closes the batch in flight on conn.
func (t *Tracer) TraceBatchEnd(_ context.Context, conn *pgx.Conn, _ pgx.TraceBatchEndData) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.batches, conn)
}

// Reset forgets everything recorded.
func (t *Tracer) Reset() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.trips = nil
}

// RoundTrips returns the statements recorded, grouped by round trip (a batch
// is one round trip).
func (t *Tracer) RoundTrips() [][]string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([][]string, len(t.trips))
	for i, trip := range t.trips {
		out[i] = append([]string(nil), trip...)
	}
	return out
}

// Count returns how many recorded statements contain every one of parts
// (case-insensitive).
func (t *Tracer) Count(parts ...string) int {
	n := 0
	for _, trip := range t.RoundTrips() {
		for _, sql := range trip {
			if Matches(sql, parts...) {
				n++
			}
		}
	}
	return n
}

// Matches reports whether sql contains every one of parts, ignoring case.
func Matches(sql string, parts ...string) bool {
	lower := strings.ToLower(sql)
	for _, p := range parts {
		if !strings.Contains(lower, strings.ToLower(p)) {
			return false
		}
	}
	return true
}
