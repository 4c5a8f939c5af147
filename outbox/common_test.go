package outbox_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/outboxseam"
	"github.com/aftercommit/aftercommit/internal/testtrace"
	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/outbox/relay"
)

// noteArgs is a job whose de-duplication key is its JSON.
type noteArgs struct {
	PingID int64  `json:"ping_id"`
	Note   string `json:"note"`
}

func (noteArgs) Kind() string { return "test.note" }

// keyedArgs chooses its own de-duplication key: Seq is ignored.
type keyedArgs struct {
	Key string `json:"key"`
	Seq int    `json:"seq"`
}

func (keyedArgs) Kind() string        { return "test.keyed" }
func (a keyedArgs) DedupeKey() string { return a.Key }

type testBundle struct {
	schema *dbtest.Schema
	pool   *pgxpool.Pool // traced, search_path = schema
	tracer *testtrace.Tracer
	client *river.Client[pgx.Tx]
	ob     *outbox.Outbox
	// relay moves the outbox rows into river_job: jobs and count drain it
	// first, so a test reads River's rows whichever path wrote them.
	relay *relay.Relay
}

type setupOpts struct {
	cfg      *outbox.Config
	maxConns int32
	// direct sets Config.DirectInsert: the tests of River's insert path
	// in the transaction.
	direct bool
}

func setup(ctx context.Context, t testing.TB, opts *setupOpts) *testBundle {
	t.Helper()
	if opts == nil {
		opts = &setupOpts{}
	}
	s := dbtest.TestSchema(ctx, t, nil)

	tracer := &testtrace.Tracer{}
	cfg, err := pgxpool.ParseConfig(s.URL)
	require.NoError(t, err)
	cfg.ConnConfig.Tracer = tracer
	cfg.MaxConns = 12
	if opts.maxConns > 0 {
		cfg.MaxConns = opts.maxConns
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)

	client, err := river.NewClient(riverpgxv5.New(pool), &river.Config{Schema: s.Name})
	require.NoError(t, err)
	obCfg := opts.cfg
	if opts.direct {
		c := outbox.Config{}
		if obCfg != nil {
			c = *obCfg
		}
		c.DirectInsert = true
		obCfg = &c
	}
	ob, err := outbox.New(pool, client, obCfg)
	require.NoError(t, err)
	// The relay reads with the schema's own pool: the traced pool's
	// statements stay the test's.
	rl, err := relay.New(s.Pool, client, &relay.Config{Schema: s.Name, Logger: discardLogger()})
	require.NoError(t, err)
	return &testBundle{schema: s, pool: pool, tracer: tracer, client: client, ob: ob, relay: rl}
}

// drain moves every committed outbox row into river_job.
func (b *testBundle) drain(ctx context.Context, t testing.TB) {
	t.Helper()
	_, err := b.relay.Drain(ctx)
	require.NoError(t, err)
}

type jobRow struct {
	Kind  string
	Args  string
	Queue string
	State string
}

// jobs returns every river_job row, ordered by id.
func (b *testBundle) jobs(ctx context.Context, t testing.TB) []jobRow {
	t.Helper()
	b.drain(ctx, t)
	rows, err := b.schema.Pool.Query(ctx, `SELECT kind, args::text, queue, state::text FROM river_job ORDER BY id`)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[jobRow])
	require.NoError(t, err)
	return out
}

func (b *testBundle) count(ctx context.Context, t testing.TB, sql string, args ...any) int {
	t.Helper()
	b.drain(ctx, t)
	var n int
	require.NoError(t, b.schema.Pool.QueryRow(ctx, sql, args...).Scan(&n))
	return n
}

// insertPing inserts a pings row in tx and returns its id.
func insertPing(ctx context.Context, t testing.TB, tx pgx.Tx, note string) int64 {
	t.Helper()
	var id int64
	require.NoError(t, tx.QueryRow(ctx, `INSERT INTO pings (note) VALUES ($1) RETURNING id`, note).Scan(&id))
	return id
}

// canonical re-encodes JSON so that Postgres' jsonb text and Go's encoding
// compare equal.
func canonical(t testing.TB, v any) string {
	t.Helper()
	var raw []byte
	switch v := v.(type) {
	case string:
		raw = []byte(v)
	default:
		var err error
		raw, err = json.Marshal(v)
		require.NoError(t, err)
	}
	var m any
	require.NoError(t, json.Unmarshal(raw, &m))
	out, err := json.Marshal(m)
	require.NoError(t, err)
	return string(out)
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// withRegistry attaches reg to cfg as jobs.NewOutbox attaches its registry,
// and returns cfg.
func withRegistry(cfg *outbox.Config, reg *outboxseam.Registry) *outbox.Config {
	outboxseam.Attach(cfg, reg)
	return cfg
}
