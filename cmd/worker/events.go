package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/aftercommit/aftercommit/outbox/natsrelay"
)

// eventsRelay is the worker's relay of outbox_events to NATS JetStream
// (--nats-url): every worker process runs one, and the lease makes one of
// them active per stream.
type eventsRelay struct {
	nc     *nats.Conn
	relay  *natsrelay.Relay
	pool   *pgxpool.Pool
	cancel context.CancelFunc
	done   chan error
	log    *slog.Logger
}

// eventsRelayConns is the size of the events relay's own pool: it runs
// one statement at a time, and must not wait behind the jobs for a
// connection of the worker's pool (BENCHMARKS.md §18).
const eventsRelayConns = 2

// startEventsRelay connects to NATS (retrying in the background when it is
// down: the worker starts anyway) and starts the relay on a pool of its own
// with the worker's connection settings.
func startEventsRelay(ctx context.Context, cfg *config, logger *slog.Logger) (*eventsRelay, error) {
	pcfg := cfg.pool.Copy()
	pcfg.MaxConns, pcfg.MinConns = eventsRelayConns, 0
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("worker: the events relay's pool: %w", err)
	}
	nc, err := nats.Connect(cfg.natsURL,
		nats.Name("aftercommit-worker"),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				logger.Warn("worker: disconnected from NATS", slog.Any("err", err))
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			logger.Info("worker: reconnected to NATS", slog.String("server", c.ConnectedUrlRedacted()))
		}),
	)
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("worker: connecting to NATS: %w", err)
	}
	rl, err := natsrelay.New(pool, nc, &natsrelay.Config{
		Stream: cfg.natsStream, SubjectPrefix: cfg.natsPrefix, CreateStream: true, Logger: logger,
	})
	if err != nil {
		nc.Close()
		pool.Close()
		return nil, fmt.Errorf("worker: %w", err)
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	e := &eventsRelay{nc: nc, relay: rl, pool: pool, cancel: cancel, done: make(chan error, 1), log: logger}
	go func() { e.done <- rl.Run(rctx) }()
	return e, nil
}

// stop ends the relay (it hands its lease back) and closes its
// connections.
func (e *eventsRelay) stop() {
	e.cancel()
	if err := <-e.done; err != nil {
		e.log.Error("worker: the events relay stopped", slog.Any("err", err))
	}
	e.nc.Close()
	e.pool.Close()
}

// detail is the relay's line in /readyz.
func (e *eventsRelay) detail() string {
	s := e.relay.State()
	role := "standby"
	if s.Active {
		role = "active"
	}
	line := fmt.Sprintf("events relay: %s, stream %s, nats %s, last event %d (stream sequence %d), %d published by this process",
		role, s.Stream, e.nc.Status(), s.LastID, s.LastSeq, s.Published)
	if s.Err != "" {
		line += ", last error: " + s.Err
	}
	return line
}

// eventsCollector serves the relay's metrics: this process's state, and,
// from the process holding the lease, the stream's lag read from
// outbox_event_relay_lag at scrape.
type eventsCollector struct {
	e *eventsRelay

	active, published, lastID, pending, oldest *prometheus.Desc

	mu sync.Mutex
}

func newEventsCollector(e *eventsRelay) *eventsCollector {
	l := []string{"stream"}
	return &eventsCollector{
		e:         e,
		active:    prometheus.NewDesc("aftercommit_events_relay_active", "1 when this process's relay holds the stream's lease and publishes.", l, nil),
		published: prometheus.NewDesc("aftercommit_events_relay_published_total", "Events this process's relay published and JetStream acknowledged.", l, nil),
		lastID:    prometheus.NewDesc("aftercommit_events_relay_last_id", "The stream's cursor: every outbox_events id up to it is in JetStream.", l, nil),
		pending:   prometheus.NewDesc("aftercommit_events_relay_pending", "Events committed but not yet acknowledged by JetStream (served by the active relay).", l, nil),
		oldest:    prometheus.NewDesc("aftercommit_events_relay_oldest_pending_seconds", "Age of the oldest event not yet acknowledged by JetStream, 0 when none (served by the active relay).", l, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *eventsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.active, c.published, c.lastID, c.pending, c.oldest} {
		ch <- d
	}
}

const lagSQL = `SELECT pending, oldest_pending_seconds FROM outbox_event_relay_lag WHERE stream = $1`

// Collect implements prometheus.Collector.
func (c *eventsCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.e.relay.State()
	active := 0.0
	if s.Active {
		active = 1
	}
	ch <- prometheus.MustNewConstMetric(c.active, prometheus.GaugeValue, active, s.Stream)
	ch <- prometheus.MustNewConstMetric(c.published, prometheus.CounterValue, float64(s.Published), s.Stream)
	ch <- prometheus.MustNewConstMetric(c.lastID, prometheus.GaugeValue, float64(s.LastID), s.Stream)
	if !s.Active {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var pending int64
	var oldest float64
	if err := c.e.pool.QueryRow(ctx, lagSQL, s.Stream).Scan(&pending, &oldest); err != nil {
		c.e.log.Warn("worker: reading the events relay's lag", slog.Any("err", err))
		return
	}
	ch <- prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, float64(pending), s.Stream)
	ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, oldest, s.Stream)
}
