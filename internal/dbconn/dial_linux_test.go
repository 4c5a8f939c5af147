package dbconn

import (
	"context"
	"net"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/aftercommit/aftercommit/internal/dbtest"
)

// TestDeadPeerDetection reads back the socket options of a pooled
// connection: keepalive probes from 15 s of idleness, every 5 s, 3 of them,
// and TCP_USER_TIMEOUT of 30 s.
func TestDeadPeerDetection(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cfg, err := ParseConfig(dbtest.ServerURL(t), &Opts{MaxConns: 1})
	require.NoError(t, err)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	defer pool.Close()
	conn, err := pool.Acquire(ctx)
	require.NoError(t, err)
	defer conn.Release()

	tcp, ok := conn.Conn().PgConn().Conn().(*net.TCPConn)
	require.True(t, ok, "a TCP connection, got %T", conn.Conn().PgConn().Conn())
	raw, err := tcp.SyscallConn()
	require.NoError(t, err)
	got := map[string]int{}
	require.NoError(t, raw.Control(func(fd uintptr) {
		for name, opt := range map[string][2]int{
			"SO_KEEPALIVE":     {unix.SOL_SOCKET, unix.SO_KEEPALIVE},
			"TCP_KEEPIDLE":     {unix.IPPROTO_TCP, unix.TCP_KEEPIDLE},
			"TCP_KEEPINTVL":    {unix.IPPROTO_TCP, unix.TCP_KEEPINTVL},
			"TCP_KEEPCNT":      {unix.IPPROTO_TCP, unix.TCP_KEEPCNT},
			"TCP_USER_TIMEOUT": {unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT},
		} {
			v, err := unix.GetsockoptInt(int(fd), opt[0], opt[1])
			require.NoError(t, err, name)
			got[name] = v
		}
	}))
	require.Equal(t, map[string]int{
		"SO_KEEPALIVE":     1,
		"TCP_KEEPIDLE":     15,
		"TCP_KEEPINTVL":    5,
		"TCP_KEEPCNT":      3,
		"TCP_USER_TIMEOUT": 30000,
	}, got)
}
