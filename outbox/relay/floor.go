package relay

import (
	"sync"
	"time"
)

// scanFloor is where the relay's loop starts its takes: above the highest
// id that a take begun at least Config.ScanLag ago moved.
//
// Why it is safe. Ids come from one sequence, so a row below a take's
// highest moved id was INSERTed before that take began. A take moves the
// lowest ids visible to it (but those another relay holds), so a row below
// the floor that is still in the table was either invisible to every take
// since its INSERT — its transaction had not committed, ScanLag or more
// after its INSERT — or held by a relay whose batch rolled back. The full
// scan, every Config.FullScanInterval, moves both: the floor bounds when a
// row moves, never whether.
type scanFloor struct {
	mu sync.Mutex
	// marks are the takes that moved rows, by when each began, oldest
	// first; of those older than the lag, only the newest is kept.
	marks    []floorMark
	lastFull time.Time
}

type floorMark struct {
	at time.Time
	id int64 // the highest id the take moved
}

// from returns the id above which a take beginning now looks: 0 (the
// table's head) when a full scan is due, or the lag is negative.
func (f *scanFloor) from(now time.Time, lag, every time.Duration) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	if lag < 0 || now.Sub(f.lastFull) >= every {
		f.lastFull = now
		return 0
	}
	var floor int64
	keep := 0
	for i, m := range f.marks {
		if now.Sub(m.at) < lag {
			break
		}
		floor, keep = max(floor, m.id), i
	}
	f.marks = f.marks[keep:]
	return floor
}

// mark records a take begun at at that moved rows up to id.
func (f *scanFloor) mark(at time.Time, id int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.marks = append(f.marks, floorMark{at: at, id: id})
	// Movers commit out of order now and then: keep the marks by start.
	for i := len(f.marks) - 1; i > 0 && f.marks[i].at.Before(f.marks[i-1].at); i-- {
		f.marks[i], f.marks[i-1] = f.marks[i-1], f.marks[i]
	}
}
