package dbtest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// TestPoolAfterAKilledBinary runs a child test binary that takes a schema,
// leaves rows, a schema named after its own and (in one case) a table of
// its own behind, and exits without its cleanups, as a killed binary
// would. The server ends the child's lease; the next binary that takes the
// schema finds it emptied, without the leftover schema, or drops it when
// its structure changed. The child's schemas have a prefix of their own,
// so that no other binary takes them first.
func TestPoolAfterAKilledBinary(t *testing.T) {
	if mode := os.Getenv("DBTEST_POOL_CHILD"); mode != "" {
		poolChild(t, mode)
		return
	}
	t.Parallel()
	ctx := context.Background()
	for _, tc := range []struct {
		mode    string
		changed bool
	}{{"rows", false}, {"table", true}} {
		t.Run(tc.mode, func(t *testing.T) {
			t.Parallel()
			cmd := exec.Command(os.Args[0], "-test.run=^TestPoolAfterAKilledBinary$", "-test.v")
			prefix := fmt.Sprintf("actpooltest_%d_%s_", os.Getpid(), tc.mode)
			cmd.Env = append(os.Environ(), "DBTEST_POOL_CHILD="+tc.mode, testPrefixEnv+"="+prefix)
			out, err := cmd.CombinedOutput()
			require.NoError(t, err, "%s", out)
			_, after, found := strings.Cut(string(out), "schema=")
			require.True(t, found, "%s", out)
			name, _, _ := strings.Cut(after, "\n")
			require.True(t, strings.HasPrefix(name, prefix), name)

			var pings int
			var derived bool
			var comment string
			require.NoError(t, h.admin.QueryRow(ctx, fmt.Sprintf(`SELECT (SELECT count(*) FROM %s),
				EXISTS (SELECT FROM pg_namespace WHERE nspname = $1), obj_description($2::regnamespace, 'pg_namespace')`,
				pgx.Identifier{name, "pings"}.Sanitize()), name+"_target", name).Scan(&pings, &derived, &comment))
			require.Equal(t, 1, pings, "the killed binary left its row")
			require.True(t, derived, "and the schema named after its own")
			// The server ends the child's lease once its backend sees the
			// closed connection, which can come after the child's exit.
			require.Eventually(t, func() bool {
				var held bool
				err := h.admin.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory'
					AND classid = $1::int4::oid AND objid = hashtext($2)::oid AND objsubid = 2)`, leaseKey, name).Scan(&held)
				return err == nil && !held
			}, 30*time.Second, 10*time.Millisecond, "the server ends the killed binary's lease")

			s, err := h.take(ctx, name, comment, 2)
			require.NoError(t, err)
			var exists bool
			require.NoError(t, h.admin.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)`, name+"_target").Scan(&derived))
			require.False(t, derived, "the leftover schema was dropped")
			require.NoError(t, h.admin.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)`, name).Scan(&exists))
			if tc.changed {
				require.Nil(t, s, "a schema whose structure changed is not taken")
				require.False(t, exists, "but dropped")
				return
			}
			require.NotNil(t, s)
			t.Cleanup(func() { h.retire(context.WithoutCancel(ctx), s) })
			require.True(t, exists)
			require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*) FROM pings`).Scan(&pings))
			require.Zero(t, pings, "the taken schema was emptied")
		})
	}
}

// poolChild is the killed binary: it prints its schema's name and exits
// before any cleanup runs.
func poolChild(t *testing.T, mode string) {
	ctx := context.Background()
	s := TestSchema(ctx, t, &Opts{MaxConns: 1})
	_, err := s.Pool.Exec(ctx, `INSERT INTO pings (note) VALUES ('left behind')`)
	require.NoError(t, err)
	_, err = s.Pool.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{s.Name + "_target"}.Sanitize())
	require.NoError(t, err)
	if mode == "table" {
		_, err = s.Pool.Exec(ctx, `CREATE TABLE left_behind (id int)`)
		require.NoError(t, err)
	}
	fmt.Printf("schema=%s\n", s.Name)
	os.Exit(0)
}
