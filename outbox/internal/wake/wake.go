// Package wake lets a writer in this process wake the relays of the same
// database and schema at once after a commit, with no notification sent to
// Postgres: the in-process shortcut beside the throttled pg_notify that
// reaches relays in other processes.
package wake

import (
	"strconv"
	"sync"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Key names the database and schema a pool's connections write to: host,
// port, database and the search_path runtime parameter.
func Key(pool *pgxpool.Pool) string {
	c := pool.Config().ConnConfig
	return KeyFor(pool, c.RuntimeParams["search_path"])
}

// KeyFor is Key with the schema (search path) given.
func KeyFor(pool *pgxpool.Pool, searchPath string) string {
	c := pool.Config().ConnConfig
	return c.Host + "|" + strconv.Itoa(int(c.Port)) + "|" + c.Database + "|" + searchPath
}

var (
	mu   sync.Mutex
	subs = map[string]map[chan struct{}]struct{}{}
)

// Subscribe returns a channel that receives a value (at most one pending)
// whenever Notify(key) is called, and a function that ends the
// subscription.
func Subscribe(key string) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	mu.Lock()
	if subs[key] == nil {
		subs[key] = map[chan struct{}]struct{}{}
	}
	subs[key][ch] = struct{}{}
	mu.Unlock()
	return ch, func() {
		mu.Lock()
		delete(subs[key], ch)
		if len(subs[key]) == 0 {
			delete(subs, key)
		}
		mu.Unlock()
	}
}

// Notify wakes every subscriber of key; it never blocks.
func Notify(key string) {
	mu.Lock()
	defer mu.Unlock()
	for ch := range subs[key] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}
