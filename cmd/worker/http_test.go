package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/testlog"
	"github.com/aftercommit/aftercommit/jobs"
)

// closedPortURL names a server that refuses every connection.
const closedPortURL = "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=2"

// httpClient talks to one worker's HTTP server.
type httpClient struct {
	base           string
	client         *http.Client
	user, password string
}

// newHTTPClient returns a client of the server at addr without keep-alive,
// so that no connection outlives a request (goleak, and a server that is
// gone refuses the next request).
func newHTTPClient(t *testing.T, addr string) *httpClient {
	t.Helper()
	tr := &http.Transport{DisableKeepAlives: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &httpClient{base: "http://" + addr, client: &http.Client{Transport: tr, Timeout: 10 * time.Second}}
}

// withAuth returns a copy of c that sends basic auth.
func (c *httpClient) withAuth(user, password string) *httpClient {
	cc := *c
	cc.user, cc.password = user, password
	return &cc
}

// response is what do keeps of an *http.Response: not its body, which do
// reads and closes.
type response struct {
	StatusCode int
	Header     http.Header
	URL        *url.URL // the last request's, after redirects
}

// get requests path with the given Accept header (none when empty).
func (c *httpClient) get(ctx context.Context, t *testing.T, path, accept string) (response, string) {
	t.Helper()
	header := http.Header{}
	if accept != "" {
		header.Set("Accept", accept)
	}
	return c.do(ctx, t, http.MethodGet, path, "", header)
}

// do sends one request and returns the response and its body.
func (c *httpClient) do(ctx context.Context, t *testing.T, method, path, body string, header http.Header) (response, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, strings.NewReader(body))
	require.NoError(t, err)
	for k, v := range header {
		req.Header[k] = v
	}
	if c.user != "" {
		req.SetBasicAuth(c.user, c.password)
	}
	resp, err := c.client.Do(req)
	require.NoError(t, err, "%s %s", method, path)
	defer func() { _ = resp.Body.Close() }() // read to the end below: a close error loses nothing
	got, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return response{StatusCode: resp.StatusCode, Header: resp.Header, URL: resp.Request.URL}, string(got)
}

// status is get's status code and body.
func (c *httpClient) status(ctx context.Context, t *testing.T, path string) (int, string) {
	t.Helper()
	resp, body := c.get(ctx, t, path, "")
	return resp.StatusCode, body
}

var listeningRE = regexp.MustCompile(`msg="worker: HTTP listening" addr=(\S+)`)

// httpAddr waits for the worker to log the address it listens on.
func (h *runHandle) httpAddr(t *testing.T) string {
	t.Helper()
	var addr string
	h.waitFor(t, 15*time.Second, "the worker to listen for HTTP", func() bool {
		m := listeningRE.FindStringSubmatch(h.stderr.String())
		if m == nil {
			return false
		}
		addr = m[1]
		return true
	})
	return addr
}

// The whole HTTP side of a running worker: probes, metrics after a job
// ran, the River UI's page and API, basic auth, and readiness during
// shutdown.
func TestRunHTTP(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(ctx, t)

	const user, password = "admin", "s3cret-pa55word"
	_, jobIDs := b.insertPings(ctx, t, 0)

	h := startRun(ctx, t, b.args(t, "--http-user", user, "--http-password", password)...)
	anon := newHTTPClient(t, h.httpAddr(t))
	authed := anon.withAuth(user, password)

	h.waitFor(t, 15*time.Second, "the ping job to complete", func() bool {
		state, _, _ := b.jobState(ctx, t, jobIDs[0])
		return state == "completed"
	})

	// Probes answer without credentials.
	code, body := anon.status(ctx, t, "/healthz")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "ok\n", body)
	// A job may complete before Start has returned and /readyz turns ready.
	h.waitFor(t, 15*time.Second, "/readyz to answer ok", func() bool {
		code, body = anon.status(ctx, t, "/readyz")
		return code == http.StatusOK && body == "ok\n"
	})

	// Metrics and the UI ask for them; wrong ones are refused too.
	for _, path := range []string{"/metrics", "/riverui/", "/riverui/api/jobs?state=completed"} {
		resp, _ := anon.get(ctx, t, path, "text/html")
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode, path)
		require.Equal(t, `Basic realm="aftercommit worker", charset="UTF-8"`, resp.Header.Get("WWW-Authenticate"))
		resp, _ = anon.withAuth(user, "wrong").get(ctx, t, path, "text/html")
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode, path)
		resp, _ = anon.withAuth("other", password).get(ctx, t, path, "text/html")
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode, path)
	}

	// /metrics: the job metrics of jobs.Metrics, recorded right after the
	// job's transaction committed, the queue gauges, the Go runtime and the
	// process; no outbox counter, as the worker enqueues through none.
	const completedLine = `aftercommit_job_executions_total{kind="aftercommit.ping",outcome="completed",queue="default"} 1`
	var metrics string
	// The queue gauges come from River's leader, once elected (a read
	// before it is answered for 10 s).
	const queueLine = `aftercommit_queue_jobs{queue="default",state="available"} `
	h.waitFor(t, 20*time.Second, "the job counted in /metrics and the queue gauges", func() bool {
		code, metrics = authed.status(ctx, t, "/metrics")
		require.Equal(t, http.StatusOK, code)
		return strings.Contains(metrics, completedLine) && strings.Contains(metrics, queueLine)
	})
	for _, want := range []string{
		`aftercommit_job_executions_total{kind="aftercommit.ping",outcome="failed",queue="default"} 0`,
		`aftercommit_job_run_duration_seconds_count{kind="aftercommit.ping",queue="default"} 1`,
		`aftercommit_job_queue_latency_seconds_count{kind="aftercommit.ping",queue="default"} 1`,
		`aftercommit_queue_stuck_jobs{queue="default"} 0`,
		"# TYPE go_goroutines gauge",
		"# TYPE process_cpu_seconds_total counter",
		"promhttp_metric_handler_requests_total",
	} {
		require.Contains(t, metrics, want)
	}
	require.NotContains(t, metrics, "aftercommit_outbox_flushes_total", "a worker enqueues nothing through an outbox")

	// The River UI's page, with its assets under the prefix.
	resp, page := authed.get(ctx, t, "/riverui/", "text/html")
	require.Equal(t, http.StatusOK, resp.StatusCode, page)
	require.Contains(t, resp.Header.Get("Content-Type"), "text/html")
	require.Contains(t, page, "<title>River</title>")
	require.Contains(t, page, `"/riverui/api"`, "the page calls the API under the prefix")
	script := regexp.MustCompile(`src="(/riverui/assets/[^"]+\.js)"`).FindStringSubmatch(page)
	require.NotNil(t, script, "no script in the page:\n%s", page)
	resp, _ = authed.get(ctx, t, script[1], "")
	require.Equal(t, http.StatusOK, resp.StatusCode, script[1])
	// "/riverui" without its slash is sent to the page.
	resp, _ = authed.get(ctx, t, "/riverui", "text/html")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "/riverui/", resp.URL.Path)

	// Its API lists the job the test inserted, from the worker's schema.
	resp, body = authed.get(ctx, t, "/riverui/api/jobs?state=completed", "application/json")
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	var list struct {
		Data []struct {
			ID    int64  `json:"id"`
			Kind  string `json:"kind"`
			Queue string `json:"queue"`
			State string `json:"state"`
		} `json:"data"`
	}
	require.NoError(t, json.Unmarshal([]byte(body), &list), body)
	// The leader's periodic event pruner may have run meanwhile: only the
	// test's kind is the test's.
	pings := slices.DeleteFunc(list.Data, func(j struct {
		ID    int64  `json:"id"`
		Kind  string `json:"kind"`
		Queue string `json:"queue"`
		State string `json:"state"`
	}) bool {
		return j.Kind != jobs.PingKind
	})
	require.Len(t, pings, 1, body)
	require.Equal(t, jobIDs[0], pings[0].ID)
	require.Equal(t, "default", pings[0].Queue)
	require.Equal(t, "completed", pings[0].State)
	resp, body = authed.get(ctx, t, "/riverui/api/queues", "application/json")
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	require.Contains(t, body, `"name":"default"`)
	// Changes from another site's page are refused (CSRF), from the UI's
	// own page accepted. Cancelling a completed job changes nothing.
	cancelBody := `{"ids":["` + strconv.FormatInt(jobIDs[0], 10) + `"]}`
	jsonHeader := func(site string) http.Header {
		return http.Header{"Content-Type": {"application/json"}, "Sec-Fetch-Site": {site}}
	}
	resp, body = authed.do(ctx, t, http.MethodPost, "/riverui/api/jobs/cancel", cancelBody, jsonHeader("cross-site"))
	require.Equal(t, http.StatusForbidden, resp.StatusCode, body)
	resp, body = authed.do(ctx, t, http.MethodPost, "/riverui/api/jobs/cancel", cancelBody, jsonHeader("same-origin"))
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	state, _, _ := b.jobState(ctx, t, jobIDs[0])
	require.Equal(t, "completed", state)

	// The other calls the page makes on load.
	for _, path := range []string{"/riverui/api/features", "/riverui/api/states"} {
		resp, body = authed.get(ctx, t, path, "application/json")
		require.Equal(t, http.StatusOK, resp.StatusCode, "%s: %s", path, body)
	}

	// Shutdown: not ready from the signal on while a job still runs; alive
	// and serving until the River client stopped.
	_, slow := b.insertPings(ctx, t, 3000)
	h.waitFor(t, 15*time.Second, "the slow job to be running", func() bool {
		state, _, _ := b.jobState(ctx, t, slow[0])
		return state == "running"
	})
	h.cancel()
	h.waitFor(t, 2*time.Second, "/readyz to answer 503 while stopping", func() bool {
		code, body := anon.status(ctx, t, "/readyz")
		if code == http.StatusOK {
			return false
		}
		require.Equal(t, http.StatusServiceUnavailable, code)
		require.Equal(t, "not ready: River client not started\n", body)
		return true
	})
	code, _ = anon.status(ctx, t, "/healthz")
	require.Equal(t, http.StatusOK, code)
	state, _, _ = b.jobState(ctx, t, slow[0])
	require.Equal(t, "running", state, "the check ran while the job ran")

	require.Equal(t, 0, h.stop(t, 15*time.Second), "stderr:\n%s", h.stderr)
	state, _, _ = b.jobState(ctx, t, slow[0])
	require.Equal(t, "completed", state)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, anon.base+"/healthz", nil)
	require.NoError(t, err)
	raw, err := anon.client.Do(req)
	if err == nil { // HTTP still open: the test fails below, without leaking the body
		_ = raw.Body.Close()
	}
	require.ErrorIs(t, err, syscall.ECONNREFUSED, "HTTP is closed once run returned")

	logs := h.stderr.String()
	require.Contains(t, logs, "auth=true")
	require.NotContains(t, logs, "beyond loopback")
	require.NotContains(t, logs, password)
}

// tcpProxy forwards connections to a Postgres server until it is taken down,
// which stands for the server stopping: connections are cut and new ones
// closed at once. Brought up again, it forwards again on the same port.
type tcpProxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	down  bool
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func startProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &tcpProxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Go(p.accept)
	t.Cleanup(func() {
		_ = ln.Close()
		p.setDown(true)
		p.wg.Wait()
	})
	return p
}

func (p *tcpProxy) accept() {
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(in) {
			_ = in.Close()
			continue
		}
		out, err := net.Dial("tcp", p.target)
		if err != nil || !p.track(out) {
			_ = in.Close()
			if out != nil {
				_ = out.Close()
			}
			continue
		}
		for _, pair := range [][2]net.Conn{{in, out}, {out, in}} {
			p.wg.Go(func() {
				_, _ = io.Copy(pair[0], pair[1])
				_ = pair[0].Close()
				_ = pair[1].Close()
			})
		}
	}
}

// track records c unless the proxy is down.
func (p *tcpProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.down {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *tcpProxy) setDown(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
	if down {
		for c := range p.conns {
			_ = c.Close()
		}
		clear(p.conns)
	}
}

// viaProxy returns raw (URL or keyword/value) pointed at addr.
func viaProxy(t *testing.T, raw, addr string) string {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	if !strings.Contains(raw, "://") {
		return raw + " host=" + host + " port=" + port
	}
	u, err := url.Parse(raw)
	require.NoError(t, err)
	u.Host = addr
	return u.String()
}

// /readyz follows the database: 200 while it is up, 503 while it is down
// (the worker keeps running), 200 again once it is back.
func TestRunReadyzFollowsDatabase(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(ctx, t)

	cc, err := pgx.ParseConfig(b.schema.URL)
	require.NoError(t, err)
	if strings.HasPrefix(cc.Host, "/") {
		t.Skip("the test server is on a Unix socket; this test proxies TCP")
	}
	proxy := startProxy(t, net.JoinHostPort(cc.Host, strconv.Itoa(int(cc.Port))))

	h := startRun(ctx, t, "--database-url", viaProxy(t, workerURL(t, b.schema), proxy.ln.Addr().String()),
		"--schema", b.schema.Name, "--http", "127.0.0.1:0")
	c := newHTTPClient(t, h.httpAddr(t))
	readyz := func(want int) func() bool {
		return func() bool {
			code, _ := c.status(ctx, t, "/readyz")
			return code == want
		}
	}

	h.waitFor(t, 15*time.Second, "/readyz 200 with the database up", readyz(http.StatusOK))

	proxy.setDown(true)
	h.waitFor(t, 15*time.Second, "/readyz 503 with the database down", readyz(http.StatusServiceUnavailable))
	code, body := c.status(ctx, t, "/readyz")
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Equal(t, "not ready: database unreachable: ping failed or took over 1s\n", body)
	code, _ = c.status(ctx, t, "/healthz")
	require.Equal(t, http.StatusOK, code, "alive while the database is down")

	proxy.setDown(false)
	h.waitFor(t, 30*time.Second, "/readyz 200 with the database back", readyz(http.StatusOK))
	// And the worker works again.
	_, jobIDs := b.insertPings(ctx, t, 0)
	h.waitFor(t, 30*time.Second, "a job inserted after the outage to complete", func() bool {
		state, _, _ := b.jobState(ctx, t, jobIDs[0])
		return state == "completed"
	})

	require.Equal(t, 0, h.stop(t, 30*time.Second), "stderr:\n%s", h.stderr)
	logs := h.stderr.String()
	require.Contains(t, logs, `msg="worker: not ready" reason="database unreachable: ping failed or took over 1s"`)
	require.Contains(t, logs, `msg="worker: ready"`)
}

func TestReadiness(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	// A lazy pool: it only tries to connect when pinged.
	closed, err := pgxpool.New(ctx, closedPortURL)
	require.NoError(t, err)
	t.Cleanup(closed.Close)
	up := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2}).Pool

	started := func() bool { return true }
	stopped := func() bool { return false }
	for _, tt := range []struct {
		name     string
		db       pinger
		started  func() bool
		wantCode int
		wantBody string
	}{
		{"DatabaseUpClientStarted", up, started, http.StatusOK, "ok\n"},
		{"DatabaseUpClientNotStarted", up, stopped, http.StatusServiceUnavailable, "not ready: River client not started\n"},
		{"DatabaseClosedPort", closed, started, http.StatusServiceUnavailable, "not ready: database unreachable: ping failed or took over 1s\n"},
		{"DatabaseSlow", pingFunc(func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }), started,
			http.StatusServiceUnavailable, "not ready: database unreachable: ping failed or took over 1s\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var logs testlog.Buffer
			r := &readiness{db: tt.db, started: tt.started, timeout: readyPingTimeout,
				logger: slog.New(slog.NewTextHandler(&logs, nil))}
			start := time.Now()
			rec := httptest.NewRecorder()
			r.ServeHTTP(rec, httptest.NewRequestWithContext(ctx, http.MethodGet, "/readyz", nil))
			require.Less(t, time.Since(start), readyPingTimeout+time.Second)
			require.Equal(t, tt.wantCode, rec.Code)
			require.Equal(t, tt.wantBody, rec.Body.String())
			require.Equal(t, "no-store", rec.Header().Get("Cache-Control"))
			require.NotContains(t, rec.Body.String(), "postgres", "the database's error stays in the log")

			// Only changes are logged, not every probe.
			r.ServeHTTP(httptest.NewRecorder(), httptest.NewRequestWithContext(ctx, http.MethodGet, "/readyz", nil))
			require.Equal(t, 1, strings.Count(logs.String(), "\n"), logs.String())
		})
	}
}

type pingFunc func(ctx context.Context) error

func (f pingFunc) Ping(ctx context.Context) error { return f(ctx) }

func TestBasicAuth(t *testing.T) {
	t.Parallel()

	h := basicAuth("admin", "pa55", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "secret")
	}))
	for _, tt := range []struct {
		name           string
		user, password string
		set            bool
		want           int
	}{
		{"None", "", "", false, http.StatusUnauthorized},
		{"Empty", "", "", true, http.StatusUnauthorized},
		{"WrongPassword", "admin", "pa56", true, http.StatusUnauthorized},
		{"PasswordPrefix", "admin", "pa5", true, http.StatusUnauthorized},
		{"WrongUser", "root", "pa55", true, http.StatusUnauthorized},
		{"Swapped", "pa55", "admin", true, http.StatusUnauthorized},
		{"Right", "admin", "pa55", true, http.StatusOK},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
			if tt.set {
				req.SetBasicAuth(tt.user, tt.password)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			require.Equal(t, tt.want, rec.Code)
			if tt.want == http.StatusOK {
				require.Equal(t, "secret", rec.Body.String())
				return
			}
			require.NotContains(t, rec.Body.String(), "secret")
			require.Contains(t, rec.Header().Get("WWW-Authenticate"), "Basic ")
		})
	}
}

// testDeps are httpDeps whose client and pool never reach a database.
func testDeps(ctx context.Context, t *testing.T, logs *testlog.Buffer, user, password string) *httpDeps {
	t.Helper()
	pool, err := pgxpool.New(ctx, closedPortURL)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	client, err := river.NewClient(riverpgxv5.New(pool), &river.Config{})
	require.NoError(t, err)
	logger := slog.New(slog.NewTextHandler(logs, nil))
	return &httpDeps{
		ready:   &readiness{db: pool, started: func() bool { return false }, timeout: readyPingTimeout, logger: logger},
		metrics: jobs.NewMetrics(nil),
		client:  client,
		user:    user, password: password,
		logger: logger,
	}
}

func TestStartHTTP(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	for _, tt := range []struct {
		name     string
		addr     string
		user     string
		wantWarn bool
	}{
		{"Loopback", "127.0.0.1:0", "", false},
		{"LocalhostName", "localhost:0", "", false},
		{"AllInterfaces", ":0", "", true},
		{"AllInterfacesIPv4", "0.0.0.0:0", "", true},
		{"AllInterfacesWithAuth", ":0", "admin", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var logs testlog.Buffer
			srv, err := startHTTP(ctx, tt.addr, testDeps(ctx, t, &logs, tt.user, "pa55"))
			require.NoError(t, err)
			defer srv.shutdown(ctx)
			require.Contains(t, logs.String(), `msg="worker: HTTP listening" addr=`)
			if tt.wantWarn {
				require.Contains(t, logs.String(), "level=WARN")
				require.Contains(t, logs.String(), "HTTP listens beyond loopback without basic auth")
			} else {
				require.NotContains(t, logs.String(), "level=WARN")
			}

			addr, ok := srv.addr.(*net.TCPAddr)
			require.True(t, ok, "a tcp listener's address is a *net.TCPAddr")
			if addr.IP.IsUnspecified() {
				addr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: addr.Port}
			}
			c := newHTTPClient(t, addr.String())
			code, body := c.status(ctx, t, "/healthz")
			require.Equal(t, http.StatusOK, code)
			require.Equal(t, "ok\n", body)
			code, body = c.status(ctx, t, "/readyz")
			require.Equal(t, http.StatusServiceUnavailable, code)
			require.Equal(t, "not ready: River client not started\n", body)
			code, body = c.status(ctx, t, "/")
			require.Equal(t, http.StatusOK, code)
			require.Contains(t, body, "/riverui/")
			code, _ = c.status(ctx, t, "/nope")
			require.Equal(t, http.StatusNotFound, code)
			require.NotContains(t, logs.String(), "pa55")
		})
	}

	t.Run("PortInUse", func(t *testing.T) {
		t.Parallel()
		taken, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		defer func() { _ = taken.Close() }() // it only holds the port

		var logs testlog.Buffer
		_, err = startHTTP(ctx, taken.Addr().String(), testDeps(ctx, t, &logs, "", ""))
		require.Error(t, err)
		require.Equal(t, "worker: cannot listen for HTTP on "+taken.Addr().String()+
			" (bind: address already in use): free the port or set --http / AFTERCOMMIT_HTTP (\"off\" turns HTTP off)",
			err.Error())
	})
}

// A port in use fails the start with one line and exit code 1, before any
// job runs.
func TestRunHTTPPortInUse(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(ctx, t)

	taken, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer func() { _ = taken.Close() }() // it only holds the port
	_, jobIDs := b.insertPings(ctx, t, 0)

	var stdout, stderr testlog.Buffer
	code := run(ctx, b.args(t, "--http", taken.Addr().String()), noEnv, &stdout, &stderr)
	require.Equal(t, exitFailure, code)
	out := stderr.String()
	require.Equal(t, 1, strings.Count(out, "\n"), "want exactly one line, got:\n%s", out)
	require.Contains(t, out, "worker: cannot listen for HTTP on "+taken.Addr().String()+" (bind: address already in use)")
	state, _, _ := b.jobState(ctx, t, jobIDs[0])
	require.Equal(t, "available", state, "the worker never started")
}

// --http off runs the worker without HTTP.
func TestRunHTTPOff(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(ctx, t)

	_, jobIDs := b.insertPings(ctx, t, 0)
	h := startRun(ctx, t, b.args(t, "--http", "")...)
	h.waitFor(t, 15*time.Second, "the ping job to complete", func() bool {
		state, _, _ := b.jobState(ctx, t, jobIDs[0])
		return state == "completed"
	})
	require.Equal(t, 0, h.stop(t, 15*time.Second), "stderr:\n%s", h.stderr)
	require.NotContains(t, h.stderr.String(), "HTTP")
}
