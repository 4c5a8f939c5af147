package main

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/riverqueue/river"
	"riverqueue.com/riverui"

	"github.com/aftercommit/aftercommit/jobs"
)

const (
	// readyPingTimeout bounds the database ping of /readyz.
	readyPingTimeout = time.Second
	// httpShutdownTimeout bounds the wait for requests in flight once the
	// River client stopped.
	httpShutdownTimeout = 5 * time.Second
	// riverUIPrefix is where the River UI is mounted.
	riverUIPrefix = "/riverui"
	// basicAuthRealm names the protected area in the browser's prompt.
	basicAuthRealm = "aftercommit worker"
)

// pinger is what the readiness check needs of the pool.
type pinger interface {
	Ping(ctx context.Context) error
}

// readiness answers /readyz: ready when the database answers a ping within
// timeout and the River client has started (and is not stopping).
type readiness struct {
	db      pinger
	started func() bool
	timeout time.Duration
	logger  *slog.Logger
	// events, when set, adds the events relay's line to a ready answer
	// (its state never makes the worker unready: jobs run without NATS).
	events *eventsRelay

	// mu guards the last answer, checked once there is one, and its reason
	// ("" for ready): only changes are logged, not every probe.
	mu         sync.Mutex
	checked    bool
	lastReason string
}

// check returns "" when ready, else a short reason for a person. The
// database's error is logged (on changes) but never returned: /readyz is not
// guarded, and the error names the host and the user.
func (r *readiness) check(ctx context.Context) string {
	var (
		reason string
		err    error
	)
	if !r.started() {
		reason = "River client not started"
	} else {
		ctx, cancel := context.WithTimeout(ctx, r.timeout)
		err = r.db.Ping(ctx)
		cancel()
		if err != nil {
			reason = fmt.Sprintf("database unreachable: ping failed or took over %s", r.timeout)
		}
	}
	r.noteChange(ctx, reason, err)
	return reason
}

func (r *readiness) noteChange(ctx context.Context, reason string, err error) {
	r.mu.Lock()
	changed := !r.checked || reason != r.lastReason
	r.checked, r.lastReason = true, reason
	r.mu.Unlock()
	if !changed || r.logger == nil {
		return
	}
	switch {
	case reason == "":
		r.logger.InfoContext(ctx, "worker: ready")
	case err != nil:
		r.logger.WarnContext(ctx, "worker: not ready", slog.String("reason", reason), slog.Any("err", err))
	default:
		r.logger.InfoContext(ctx, "worker: not ready", slog.String("reason", reason))
	}
}

// ServeHTTP answers 200 "ok" or 503 "not ready: <reason>".
func (r *readiness) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if reason := r.check(req.Context()); reason != "" {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, "not ready: "+reason+"\n")
		return
	}
	_, _ = io.WriteString(w, "ok\n")
	if r.events != nil {
		_, _ = io.WriteString(w, r.events.detail()+"\n")
	}
}

// basicAuth guards next with one user and password. Both sides are hashed
// before the constant-time compare so that neither the length nor the
// content of the secrets leaks through timing.
func basicAuth(user, password string, next http.Handler) http.Handler {
	wantUser := sha256.Sum256([]byte(user))
	wantPassword := sha256.Sum256([]byte(password))
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		u, p, ok := req.BasicAuth()
		gotUser := sha256.Sum256([]byte(u))
		gotPassword := sha256.Sum256([]byte(p))
		userOK := subtle.ConstantTimeCompare(gotUser[:], wantUser[:])
		passwordOK := subtle.ConstantTimeCompare(gotPassword[:], wantPassword[:])
		if !ok || userOK&passwordOK != 1 {
			w.Header().Set("WWW-Authenticate", `Basic realm="`+basicAuthRealm+`", charset="UTF-8"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, req)
	})
}

// httpDeps is what the worker's HTTP handler serves.
type httpDeps struct {
	// ready answers /readyz.
	ready *readiness
	// metrics is the job runtime's collector, of which the worker serves
	// the job metrics only: it enqueues nothing through an outbox, so the
	// outbox counters would stay at 0 (they live in the application that
	// enqueues). The Go runtime and process collectors are added next to
	// it.
	metrics *jobs.Metrics
	// queue, when set, adds the backlog and stuck-job gauges.
	queue *jobs.QueueMetrics
	// events, when set, adds the events relay's metrics.
	events *eventsRelay
	// drift counts the counter caches the reconciler repaired.
	drift *driftCounter
	// client backs the River UI.
	client *river.Client[pgx.Tx]
	// user and password, when user is set, guard /metrics and /riverui/.
	user, password string
	logger         *slog.Logger
}

// newHTTPHandler builds the mux: /healthz, /readyz, /metrics and the River
// UI under /riverui/. The River UI's background services run until ctx is
// done.
func newHTTPHandler(ctx context.Context, deps *httpDeps) (http.Handler, error) {
	reg := prometheus.NewRegistry()
	cs := []prometheus.Collector{
		deps.metrics.JobCollector(),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	}
	if deps.queue != nil {
		cs = append(cs, deps.queue)
	}
	if deps.events != nil {
		cs = append(cs, newEventsCollector(deps.events))
	}
	if deps.drift != nil {
		cs = append(cs, deps.drift.vec)
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering metrics: %w", err)
		}
	}
	metrics := promhttp.InstrumentMetricHandler(reg, promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(deps.logger.Handler(), slog.LevelError),
		Registry: reg,
	}))

	ui, err := riverui.NewHandler(&riverui.HandlerOpts{
		Endpoints: riverui.NewEndpoints(deps.client, nil),
		Logger:    deps.logger,
		Prefix:    riverUIPrefix,
	})
	if err != nil {
		return nil, fmt.Errorf("building the River UI: %w", err)
	}
	if err := ui.Start(ctx); err != nil {
		return nil, fmt.Errorf("starting the River UI: %w", err)
	}

	guard := func(h http.Handler) http.Handler {
		if deps.user == "" {
			return h
		}
		return basicAuth(deps.user, deps.password, h)
	}

	mux := http.NewServeMux()
	// Probes are never guarded: orchestrators call them without credentials.
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.Handle("GET /readyz", deps.ready)
	mux.Handle("GET /metrics", guard(metrics))
	// The UI changes jobs and queues with POST, PUT and PATCH, and a browser
	// replays basic auth on any request to the host: refuse those that
	// another site's page makes (CSRF).
	mux.Handle(riverUIPrefix+"/", guard(http.NewCrossOriginProtection().Handler(ui)))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "aftercommit worker\n\n"+
			"/healthz   process alive\n"+
			"/readyz    database reachable and River client started\n"+
			"/metrics   Prometheus metrics\n"+
			riverUIPrefix+"/  River UI\n")
	})
	return mux, nil
}

// httpServer is the worker's running HTTP server.
type httpServer struct {
	srv      *http.Server
	addr     net.Addr
	cancelUI context.CancelFunc
	// failed is closed when Serve returns before shutdown; serveErr is
	// then its error.
	failed   chan struct{}
	serveErr error
	// served is closed once Serve returned.
	served chan struct{}
	logger *slog.Logger
}

// startHTTP listens on addr, then serves deps in a goroutine until shutdown.
// A listen failure (port in use, bad host) is returned at once.
func startHTTP(ctx context.Context, addr string, deps *httpDeps) (*httpServer, error) {
	// A signal during startup must not turn into a listen error: serve
	// starts, then stops at once.
	var lc net.ListenConfig
	ln, err := lc.Listen(context.WithoutCancel(ctx), "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("worker: cannot listen for HTTP on %s (%v): free the port or set --http / AFTERCOMMIT_HTTP (\"off\" turns HTTP off)",
			addr, listenReason(err))
	}

	uiCtx, cancelUI := context.WithCancel(context.WithoutCancel(ctx))
	handler, err := newHTTPHandler(uiCtx, deps)
	if err != nil {
		cancelUI()
		_ = ln.Close()
		return nil, fmt.Errorf("worker: %w", err)
	}

	s := &httpServer{
		srv: &http.Server{
			Handler:           handler,
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       2 * time.Minute,
			ErrorLog:          slog.NewLogLogger(deps.logger.Handler(), slog.LevelWarn),
		},
		addr:     ln.Addr(),
		cancelUI: cancelUI,
		failed:   make(chan struct{}),
		served:   make(chan struct{}),
		logger:   deps.logger,
	}
	go func() {
		defer close(s.served)
		if err := s.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			s.serveErr = err
			close(s.failed)
		}
	}()

	attrs := []any{slog.String("addr", s.addr.String()), slog.Bool("auth", deps.user != "")}
	deps.logger.InfoContext(ctx, "worker: HTTP listening", attrs...)
	if deps.user == "" && !isLoopback(s.addr) {
		deps.logger.WarnContext(ctx, "worker: HTTP listens beyond loopback without basic auth: anyone who reaches it can read /metrics "+
			"and cancel, retry or delete jobs in the River UI; set --http-user and --http-password (or their environment variables) "+
			"or put an authenticating proxy in front", attrs...)
	}
	return s, nil
}

// listenReason is the cause of a listen error without Go's "listen tcp
// <addr>:" prefix, e.g. "bind: address already in use".
func listenReason(err error) string {
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Err != nil {
		return opErr.Err.Error()
	}
	return err.Error()
}

// isLoopback tells whether a bound address is reachable from this machine
// only. An unspecified host (":9090", "0.0.0.0") is not.
func isLoopback(addr net.Addr) bool {
	tcp, ok := addr.(*net.TCPAddr)
	return ok && tcp.IP.IsLoopback()
}

// shutdown stops accepting, waits up to httpShutdownTimeout for requests in
// flight, then stops the River UI's background services.
func (s *httpServer) shutdown(ctx context.Context) {
	base := context.WithoutCancel(ctx)
	sctx, cancel := context.WithTimeout(base, httpShutdownTimeout)
	defer cancel()
	if err := s.srv.Shutdown(sctx); err != nil {
		s.logger.WarnContext(base, "worker: HTTP requests still running at shutdown were cut off", slog.Any("err", err))
		_ = s.srv.Close()
	}
	<-s.served
	s.cancelUI()
}
