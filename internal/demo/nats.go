package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/aftercommit/aftercommit/donations"
	"github.com/aftercommit/aftercommit/outbox/inbox"
	"github.com/aftercommit/aftercommit/outbox/natsrelay"
)

// natsTally is the demo's consumer past the database (Config.NATSURL): a
// relay sends the run's donation.created events to a JetStream stream of
// the run's own, and a consumer keeps its own tally per fundraiser through
// the inbox, in a schema of its own, as another service would.
type natsTally struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	stream string
	schema string
	cancel context.CancelFunc
	wg     sync.WaitGroup
	errs   chan error
}

// startNATS sets up the stream and the consumer's schema and starts the
// relay and the consumer. The relay starts after the events already in the
// table: only the run's reach the stream.
func (r *run) startNATS(ctx context.Context) (*natsTally, error) {
	nc, err := nats.Connect(r.cfg.NATSURL, nats.Name("aftercommit-demo"), nats.Timeout(10*time.Second))
	if err != nil {
		return nil, fmt.Errorf("demo: connecting to NATS at --nats: %w", err)
	}
	t := &natsTally{nc: nc, stream: "AFTERCOMMIT_DEMO_" + strings.ToUpper(r.tag), schema: "aftercommit_demo_tally_" + r.tag, errs: make(chan error, 2)}
	prefix := "aftercommit.demo." + r.tag
	ok := false
	defer func() {
		if !ok {
			t.stop(ctx, r)
		}
	}()
	if t.js, err = jetstream.New(nc); err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	if _, err := natsrelay.SetupStream(ctx, t.js, natsrelay.StreamOptions{Name: t.stream, SubjectPrefix: prefix, MaxAge: 24 * time.Hour}); err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	ddl, err := inbox.CreateTableSQL(t.schema + ".inbox")
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	sql := fmt.Sprintf(`CREATE SCHEMA %[1]s;
CREATE TABLE %[1]s.tally (fundraiser_id bigint PRIMARY KEY, donations bigint NOT NULL, cents bigint NOT NULL)`, t.schema)
	if _, err := r.pool.Exec(ctx, sql); err != nil {
		return nil, fmt.Errorf("demo: creating the consumer's schema: %w", err)
	}
	if _, err := r.pool.Exec(ctx, ddl); err != nil {
		return nil, fmt.Errorf("demo: creating the consumer's inbox: %w", err)
	}
	if _, err := r.pool.Exec(ctx, `INSERT INTO outbox_event_relays (stream, topics, last_id)
		SELECT $1, $2, coalesce(max(id), 0) FROM outbox_events`, t.stream, []string{donations.TopicDonationCreated}); err != nil {
		return nil, fmt.Errorf("demo: placing the relay's cursor: %w", err)
	}

	rl, err := natsrelay.New(r.pool, nc, &natsrelay.Config{Stream: t.stream, SubjectPrefix: prefix,
		Topics: []string{donations.TopicDonationCreated}, Logger: r.cfg.Logger})
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	upsert := fmt.Sprintf(`INSERT INTO %s.tally (fundraiser_id, donations, cents) VALUES ($1, 1, $2)
ON CONFLICT (fundraiser_id) DO UPDATE SET donations = tally.donations + 1, cents = tally.cents + EXCLUDED.cents`, t.schema)
	handler := func(ctx context.Context, tx pgx.Tx, ev *inbox.Event) error {
		var d donations.DonationCreatedEvent
		if err := json.Unmarshal(ev.Data, &d); err != nil {
			return fmt.Errorf("decoding %s %s: %w", ev.Type, ev.ID, err)
		}
		_, err := tx.Exec(ctx, upsert, d.FundraiserID, d.AmountCents)
		return err
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	t.cancel = cancel
	t.wg.Go(func() { t.errs <- rl.Run(runCtx) })
	t.wg.Go(func() {
		t.errs <- inbox.Run(runCtx, r.pool, t.js, t.stream, handler, &inbox.Config{Name: "demo-tally", Table: t.schema + ".inbox",
			FilterSubjects: []string{prefix + ".donation.>"}, Logger: r.cfg.Logger})
	})
	ok = true
	return t, nil
}

// check waits for the consumer to have every donation of the run's
// fundraisers (up to timeout), then adds the invariant: the consumer's
// tally per fundraiser equals the donations table.
func (t *natsTally) check(ctx context.Context, r *run, timeout time.Duration) error {
	const sourceSQL = `SELECT count(*) FROM donations WHERE fundraiser_id = ANY($1)`
	tallySQL := fmt.Sprintf(`SELECT coalesce(sum(donations), 0) FROM %s.tally WHERE fundraiser_id = ANY($1)`, t.schema)
	start := time.Now()
	var want, got int64
	for {
		if err := r.pool.QueryRow(ctx, sourceSQL, r.expect.fundraiserIDs).Scan(&want); err != nil {
			return fmt.Errorf("demo: counting the donations: %w", err)
		}
		if err := r.pool.QueryRow(ctx, tallySQL, r.expect.fundraiserIDs).Scan(&got); err != nil {
			return fmt.Errorf("demo: reading the consumer's tally: %w", err)
		}
		if got >= want || time.Since(start) > timeout {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("demo: interrupted while waiting for the NATS consumer: %w", context.Cause(ctx))
		case <-time.After(50 * time.Millisecond):
		}
	}
	_, _ = fmt.Fprintf(r.cfg.Out, "%-28s %7d in %6.2fs\n", "NATS consumer caught up", got, time.Since(start).Seconds())
	var off int64
	err := r.pool.QueryRow(ctx, fmt.Sprintf(`
SELECT count(*) FROM (
    SELECT fundraiser_id, count(*) AS donations, sum(amount_cents) AS cents
      FROM donations WHERE fundraiser_id = ANY($1) GROUP BY fundraiser_id) AS src
  FULL JOIN (SELECT * FROM %s.tally WHERE fundraiser_id = ANY($1)) AS t USING (fundraiser_id)
 WHERE src.donations IS DISTINCT FROM t.donations OR src.cents IS DISTINCT FROM t.cents`, t.schema), r.expect.fundraiserIDs).Scan(&off)
	if err != nil {
		return fmt.Errorf("demo: comparing the consumer's tally: %w", err)
	}
	r.summary.Invariants = append(r.summary.Invariants,
		Invariant{Name: "NATS consumer's donations (inbox, via JetStream)", Want: fmt.Sprint(want), Got: fmt.Sprint(got), OK: want == got},
		Invariant{Name: "NATS consumer tally off the source of truth (fundraisers)", Want: "0", Got: fmt.Sprint(off), OK: off == 0})
	return nil
}

// stop ends the relay and the consumer, and removes the stream, the
// consumer's schema and the relay's row (which would keep the pruner from
// deleting later events).
func (t *natsTally) stop(ctx context.Context, r *run) {
	ctx = context.WithoutCancel(ctx)
	if t.cancel != nil {
		t.cancel()
		t.wg.Wait()
		close(t.errs)
		for err := range t.errs {
			if err != nil && !errors.Is(err, context.Canceled) {
				r.cfg.Logger.Warn("demo: the NATS relay or consumer stopped with an error", "err", err)
			}
		}
	}
	if t.js != nil {
		_ = t.js.DeleteStream(ctx, t.stream)
	}
	_, _ = r.pool.Exec(ctx, `DELETE FROM outbox_event_relays WHERE stream = $1`, t.stream)
	_, _ = r.pool.Exec(ctx, `DROP SCHEMA IF EXISTS `+t.schema+` CASCADE`)
	t.nc.Close()
}
