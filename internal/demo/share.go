package demo

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/aftercommit/aftercommit/reporting"
)

// shareSampleEvery is how often shareSampler looks at the bulk jobs.
const shareSampleEvery = 10 * time.Millisecond

// shareSampleSQL counts per car of $2, in one snapshot, the bulk jobs that
// hold a place of the car's fair share (released: available, running,
// snoozed or due to retry without having failed; a failed one leaves its
// place), those the share holds back (pending, and placed in their
// sequence: no longer in job_sequence_inbox, where the relay notes them),
// those not finished, and all of them.
const shareSampleSQL = `
SELECT j.args->>'car_id',
       count(*) FILTER (WHERE j.state IN ('available', 'running', 'scheduled', 'retryable') AND coalesce(cardinality(j.errors), 0) = 0),
       count(*) FILTER (WHERE j.state = 'pending' AND NOT EXISTS (SELECT FROM job_sequence_inbox i WHERE i.job_id = j.id)),
       count(*) FILTER (WHERE j.state NOT IN ('completed', 'cancelled', 'discarded')),
       count(*)
  FROM river_job j
 WHERE j.kind = $1 AND j.args->>'car_id' = ANY ($2::text[])
 GROUP BY 1`

// shareSampler watches the run's bulk jobs while they are enqueued and
// drained, and keeps, per car, the most that held a place of its fair share
// at once, and the most it held back.
type shareSampler struct {
	stopOnce sync.Once
	stopCh   chan struct{}
	done     chan struct{}

	keys []string // the cars, as args->>'car_id' holds them

	// Written by the sampling goroutine, read after done.
	placed, pending map[string]int64
	samples         int
	err             error
}

// startShareSampler samples the bulk jobs of cars every shareSampleEvery
// until stop, or until all jobs of them (the run's bulk jobs) are in
// river_job and finished.
func startShareSampler(ctx context.Context, r *run, cars []int64, jobs int) *shareSampler {
	keys := make([]string, len(cars))
	for i, c := range cars {
		keys[i] = strconv.FormatInt(c, 10)
	}
	s := &shareSampler{stopCh: make(chan struct{}), done: make(chan struct{}), keys: keys, placed: map[string]int64{}, pending: map[string]int64{}}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(shareSampleEvery)
		defer tick.Stop()
		for {
			rows, err := r.pool.Query(ctx, shareSampleSQL, reporting.CreateCarUsersInBulkKind, keys)
			var (
				car                          string
				placed, pending, open, total int64
				unfinished, moved            int64
			)
			if err == nil {
				_, err = pgx.ForEachRow(rows, []any{&car, &placed, &pending, &open, &total}, func() error {
					s.placed[car], s.pending[car] = max(s.placed[car], placed), max(s.pending[car], pending)
					unfinished, moved = unfinished+open, moved+total
					return nil
				})
			}
			if err != nil {
				s.err = err
				return
			}
			s.samples++
			if moved == int64(jobs) && unfinished == 0 {
				return
			}
			select {
			case <-s.stopCh:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

// stop ends the sampling and waits for it; it may be called more than once.
func (s *shareSampler) stop() {
	s.stopOnce.Do(func() { close(s.stopCh) })
	<-s.done
}

// checkShare adds the invariants of the bulk queue's fair share per car:
// every bulk job of the run went through its car's share, and no car ever
// had more of them in the queue than its share's places, as sampled. A
// place is one of the sequences "<car>#0" … a share spreads a car's jobs
// over (metadata aftercommit_seq.key): each runs one job at a time.
func (r *run) checkShare(ctx context.Context) error {
	s := r.share
	s.stop()
	rows, err := r.pool.Query(ctx, `
SELECT args->>'car_id', count(*) FILTER (WHERE metadata ? 'aftercommit_seq'), count(DISTINCT metadata->'aftercommit_seq'->>'key')
  FROM river_job WHERE kind = $1 AND args->>'car_id' = ANY ($2::text[])
 GROUP BY 1`, reporting.CreateCarUsersInBulkKind, s.keys)
	if err != nil {
		return fmt.Errorf("demo: reading the fair share: %w", err)
	}
	var (
		car                             string
		n, places                       int64
		shared, most, mostPlaces, ahead int64
		over                            []string
	)
	if _, err := pgx.ForEachRow(rows, []any{&car, &n, &places}, func() error {
		shared += n
		most, mostPlaces, ahead = max(most, s.placed[car]), max(mostPlaces, places), max(ahead, s.pending[car])
		if s.placed[car] > places {
			over = append(over, fmt.Sprintf("car %s: %d of %d", car, s.placed[car], places))
		}
		return nil
	}); err != nil {
		return fmt.Errorf("demo: reading the fair share: %w", err)
	}
	r.summary.Invariants = append(r.summary.Invariants, Invariant{
		Name: "bulk imports in their car's fair share",
		Want: fmt.Sprint(r.expect.bulkJobs), Got: fmt.Sprint(shared), OK: shared == int64(r.expect.bulkJobs),
	})
	peak := Invariant{Name: "most imports of one car queued at once", Want: fmt.Sprintf("≤ its %d places", mostPlaces)}
	switch {
	case s.err != nil:
		peak.Got = "error: " + s.err.Error()
	case len(over) > 0:
		peak.Got = fmt.Sprint(over)
	default:
		peak.Got = fmt.Sprintf("%d of %d places, up to %d more held back pending (%d samples)", most, mostPlaces, ahead, s.samples)
		peak.OK = true
	}
	r.summary.Invariants = append(r.summary.Invariants, peak)
	return nil
}
