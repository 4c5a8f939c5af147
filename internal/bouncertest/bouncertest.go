// Package bouncertest starts a PgBouncer in transaction pooling mode in
// front of the tests' Postgres, on a loopback port of its own, for the
// tests and benchmarks that show aftercommit behind a pooler.
//
// It runs Debian's pgbouncer (1.18, which has no protocol-level prepared
// statements: clients must not prepare named statements, see URL). Each
// Bouncer serves one schema under the database name "app": its server
// connections set their search_path to it when they connect
// (connect_query), as a role-level search_path would in production,
// because PgBouncer 1.18 refuses search_path as a startup parameter.
package bouncertest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Binary is where Debian installs PgBouncer (.ci/run installs it).
const Binary = "/usr/sbin/pgbouncer"

// ErrNotInstalled is returned when Binary is missing.
var ErrNotInstalled = errors.New("bouncertest: pgbouncer is not installed (apt-get install pgbouncer; .ci/run does)")

// Config says what a Bouncer fronts.
type Config struct {
	// ServerURL is the Postgres the pooler connects to (host, port, user,
	// database are taken from it).
	ServerURL string
	// Schema becomes the search_path of every server connection.
	Schema string
	// PoolSize is the server connections per (database, user); defaults to
	// 20.
	PoolSize int
	// PoolMode is "transaction" (the default) or "session".
	PoolMode string
}

// Bouncer is a running PgBouncer.
type Bouncer struct {
	// Port is the loopback port it listens on.
	Port int

	dir  string
	cmd  *exec.Cmd
	done chan struct{}
	log  *syncBuffer
}

// Start runs a PgBouncer for cfg and waits until it accepts connections.
func Start(ctx context.Context, cfg Config) (*Bouncer, error) {
	if _, err := os.Stat(Binary); err != nil {
		return nil, ErrNotInstalled
	}
	server, err := url.Parse(cfg.ServerURL)
	if err != nil {
		return nil, fmt.Errorf("bouncertest: server URL: %w", err)
	}
	host, port := server.Hostname(), server.Port()
	if host == "" {
		host = "127.0.0.1"
	}
	if port == "" {
		port = "5432"
	}
	dbname := strings.TrimPrefix(server.Path, "/")
	dbuser := server.User.Username()
	if dbuser == "" {
		dbuser = "postgres"
	}
	mode := cfg.PoolMode
	if mode == "" {
		mode = "transaction"
	}
	size := cfg.PoolSize
	if size == 0 {
		size = 20
	}
	listenPort, err := freePort(ctx)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "bouncertest-")
	if err != nil {
		return nil, err
	}
	// PgBouncer will not run as root: it switches to postgres (-u), which
	// must read the files.
	if err := os.Chmod(dir, 0o755); err != nil { //nolint:gosec // read by the pgbouncer user; holds no secret
		return nil, err
	}
	connect := ""
	if cfg.Schema != "" {
		connect = fmt.Sprintf(` connect_query='SET search_path TO "%s"'`, strings.ReplaceAll(cfg.Schema, `"`, `""`))
	}
	ini := fmt.Sprintf(`[databases]
app = host=%s port=%s dbname=%s user=%s%s

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = trust
auth_file = %s
pool_mode = %s
default_pool_size = %d
max_client_conn = 500
server_reset_query =
ignore_startup_parameters = extra_float_digits
server_lifetime = 3600
log_connections = 0
log_disconnections = 0
`, host, port, dbname, dbuser, connect, listenPort, filepath.Join(dir, "users.txt"), mode, size)
	users := "\"postgres\" \"\"\n\"root\" \"\"\n\"app\" \"\"\n"
	if err := os.WriteFile(filepath.Join(dir, "pgbouncer.ini"), []byte(ini), 0o644); err != nil { //nolint:gosec // see above
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "users.txt"), []byte(users), 0o644); err != nil { //nolint:gosec // trust auth: no password in it
		return nil, err
	}
	args := []string{filepath.Join(dir, "pgbouncer.ini")}
	if os.Geteuid() == 0 {
		if _, err := user.Lookup("postgres"); err != nil {
			return nil, fmt.Errorf("bouncertest: running as root and no postgres user to run pgbouncer as: %w", err)
		}
		args = append([]string{"-u", "postgres"}, args...)
	}
	b := &Bouncer{Port: listenPort, dir: dir, done: make(chan struct{}), log: &syncBuffer{}}
	b.cmd = exec.Command(Binary, args...) //nolint:gosec // a fixed binary, our own config
	b.cmd.Stdout, b.cmd.Stderr = b.log, b.log
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := b.cmd.Start(); err != nil {
		return nil, fmt.Errorf("bouncertest: starting pgbouncer: %w", err)
	}
	go func() { _ = b.cmd.Wait(); close(b.done) }()

	deadline := time.Now().Add(10 * time.Second)
	for {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", b.Addr())
		if err == nil {
			_ = conn.Close()
			return b, nil
		}
		select {
		case <-b.done:
			return nil, fmt.Errorf("bouncertest: pgbouncer exited: %s", b.log.String())
		case <-ctx.Done():
			b.Stop()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			b.Stop()
			return nil, fmt.Errorf("bouncertest: pgbouncer did not listen within 10s: %s", b.log.String())
		}
	}
}

// Addr is host:port of the pooler.
func (b *Bouncer) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(b.Port)) }

// URL is a connection string for the pooler's "app" database as user
// (postgres when empty), with the pgx setting a transaction pooler without
// prepared statements needs: default_query_exec_mode=exec (each query is
// parsed unnamed and executed in one message sequence, no statement cache).
func (b *Bouncer) URL(user string) string {
	if user == "" {
		user = "postgres"
	}
	return fmt.Sprintf("postgres://%s@%s/app?sslmode=disable&default_query_exec_mode=exec", user, b.Addr())
}

// Log is what PgBouncer wrote so far.
func (b *Bouncer) Log() string { return b.log.String() }

// Stop ends the pooler (SIGTERM: at once, closing every connection) and
// removes its files.
func (b *Bouncer) Stop() {
	if b.cmd.Process != nil {
		_ = b.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-b.done:
		case <-time.After(5 * time.Second):
			_ = b.cmd.Process.Kill()
			<-b.done
		}
	}
	_ = os.RemoveAll(b.dir)
}

func freePort(ctx context.Context) (int, error) {
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	addr, ok := l.Addr().(*net.TCPAddr)
	if err := l.Close(); err != nil {
		return 0, err
	}
	if !ok {
		return 0, fmt.Errorf("bouncertest: %v is not a TCP address", l.Addr())
	}
	return addr.Port, nil
}

// syncBuffer collects the pooler's output.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
