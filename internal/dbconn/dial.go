package dbconn

import (
	"net"
	"time"
)

// How a connection whose peer vanished is found out. pgx's own dialer sends
// the first keepalive after 5 minutes, and nothing bounds a statement whose
// bytes the network swallows: a worker's fetch (River runs it without a
// deadline) could wait on a dead connection for as long as the kernel keeps
// retransmitting, a quarter of an hour. With these, an idle connection to
// a vanished server fails within about 30 s (KeepAliveIdle + KeepAliveCount
// × KeepAliveInterval), and one with unacknowledged bytes within
// UserTimeout (Linux TCP_USER_TIMEOUT), so the pool replaces it.
const (
	// KeepAliveIdle is how long a connection is idle before the first probe.
	KeepAliveIdle = 15 * time.Second
	// KeepAliveInterval is the time between unanswered probes.
	KeepAliveInterval = 5 * time.Second
	// KeepAliveCount is how many unanswered probes end the connection.
	KeepAliveCount = 3
	// UserTimeout is how long sent bytes may stay unacknowledged before
	// the connection is ended (Linux only; elsewhere keepalives alone).
	UserTimeout = 30 * time.Second
)

// newDialer returns the dialer of every connection ParseConfig configures.
func newDialer() *net.Dialer {
	return &net.Dialer{
		KeepAliveConfig: net.KeepAliveConfig{
			Enable:   true,
			Idle:     KeepAliveIdle,
			Interval: KeepAliveInterval,
			Count:    KeepAliveCount,
		},
		Control: setUserTimeout,
	}
}
