package jobs

import (
	"context"
	"sync"
)

// groupCommit sends the requests of a process's jobs in batches, as a
// group commit does: while a statement is out, new requests queue, and the
// next statement takes all of them (up to max). One job alone waits for one
// round trip, as it would unbatched; a hundred jobs asking together share
// a few. The rate limit and the worker lock use it.
type groupCommit[R any] struct {
	max int
	// parallel is the most batches out at once (0 means 1). With more
	// than one, a request waits for no batch but the one it is in.
	parallel int
	// send runs one statement for batch and answers every request of it.
	send func(ctx context.Context, batch []R)

	mu      sync.Mutex
	queue   []R
	sending int // loops running
}

// add queues r; a batch that includes it is sent soon, on a goroutine of
// its own, detached from ctx (the statement serves other jobs too).
func (g *groupCommit[R]) add(ctx context.Context, r R) {
	g.mu.Lock()
	g.queue = append(g.queue, r)
	if g.sending < max(1, g.parallel) {
		g.sending++
		go g.loop(context.WithoutCancel(ctx))
	}
	g.mu.Unlock()
}

// loop sends batches until the queue is empty.
func (g *groupCommit[R]) loop(ctx context.Context) {
	for {
		g.mu.Lock()
		n := min(len(g.queue), g.max)
		if n == 0 {
			g.sending--
			g.mu.Unlock()
			return
		}
		batch := g.queue[:n:n]
		g.queue = g.queue[n:]
		g.mu.Unlock()
		g.send(ctx, batch)
	}
}
