// Package pgserver starts a Postgres server of its own — initdb into a
// temporary directory, pg_ctl start on a free loopback port — for the
// commands and tests that need settings the shared server must not be
// given (autovacuum on, replication), or a server they may stop.
//
// It runs Debian's (or PATH's) server binaries; as root, it runs them as
// the postgres user, which initdb requires.
package pgserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// ErrNoBinaries is returned when the server's binaries (initdb, pg_ctl)
// are nowhere to be found.
var ErrNoBinaries = errors.New("pgserver: no Postgres server binaries (initdb, pg_ctl): install the postgresql package or set AFTERCOMMIT_PG_BINDIR")

// BinDir finds the server's binaries: AFTERCOMMIT_PG_BINDIR, else the
// newest /usr/lib/postgresql/*/bin (Debian), else the directory of initdb
// on PATH.
func BinDir() (string, error) {
	if dir := os.Getenv("AFTERCOMMIT_PG_BINDIR"); dir != "" {
		return dir, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool {
		vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[i])))
		vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[j])))
		return vi < vj
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		if _, err := os.Stat(filepath.Join(dirs[i], "initdb")); err == nil {
			return dirs[i], nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", ErrNoBinaries
}

// Server is a private Postgres server: its binaries, data directory,
// socket directory (which also holds its log) and port.
type Server struct {
	Bin, Data, Sock string
	Port            int
	// Options are more server settings for pg_ctl -o ("-c name=value …").
	Options string

	asPostgres bool
	dir        string
}

// New picks a temporary directory (owned by the server's user) and a free
// loopback port for a server; nothing is created in its data directory
// (Init does that).
func New() (*Server, error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	srv := &Server{Bin: bin, asPostgres: os.Geteuid() == 0}
	if srv.dir, err = os.MkdirTemp("", "aftercommit-pg-"); err != nil {
		return nil, fmt.Errorf("pgserver: %w", err)
	}
	srv.Data, srv.Sock = filepath.Join(srv.dir, "data"), srv.dir
	if srv.asPostgres {
		u, err := user.Lookup("postgres")
		if err != nil {
			srv.Remove()
			return nil, fmt.Errorf("pgserver: running as root, the server runs as the postgres user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(srv.dir, uid, gid); err != nil {
			srv.Remove()
			return nil, fmt.Errorf("pgserver: %w", err)
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		srv.Remove()
		return nil, fmt.Errorf("pgserver: picking a port: %w", err)
	}
	addr, ok := l.Addr().(*net.TCPAddr)
	_ = l.Close()
	if !ok {
		srv.Remove()
		return nil, fmt.Errorf("pgserver: picking a port: %v is not a TCP address", l.Addr())
	}
	srv.Port = addr.Port
	return srv, nil
}

// Start creates a cluster (initdb, trust authentication, superuser
// postgres) and starts it with the given settings ("-c name=value …",
// beside the port, socket and listen address). Stop stops it and removes
// its files.
func Start(ctx context.Context, options string) (*Server, error) {
	srv, err := New()
	if err != nil {
		return nil, err
	}
	srv.Options = options
	if err := srv.Run(ctx, "initdb", "-D", srv.Data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"); err != nil {
		srv.Remove()
		return nil, err
	}
	if err := srv.PgCtl(ctx, "start"); err != nil {
		srv.Remove()
		return nil, err
	}
	return srv, nil
}

// Run runs one of the server's tools, as the postgres user when this
// process is root; its output goes into the error.
func (srv *Server) Run(ctx context.Context, tool string, args ...string) error {
	path := filepath.Join(srv.Bin, tool)
	cmd := exec.CommandContext(ctx, path, args...)
	if srv.asPostgres {
		cmd = exec.CommandContext(ctx, "runuser", append([]string{"-u", "postgres", "--", path}, args...)...)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pgserver: %s %s: %w\n%s", tool, strings.Join(args, " "), err, out)
	}
	return nil
}

// PgCtl runs pg_ctl start or restart with the server's settings; extra
// are pg_ctl's other flags (-m mode).
func (srv *Server) PgCtl(ctx context.Context, action string, extra ...string) error {
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=40 %s", srv.Port, srv.Sock, srv.Options)
	return srv.Run(ctx, "pg_ctl", append([]string{"-D", srv.Data, "-o", opts, "-l", srv.LogFile(), "-w", action}, extra...)...)
}

// LogFile is the server's log.
func (srv *Server) LogFile() string { return filepath.Join(srv.Sock, "log") }

// URL is the URL of database db (postgres when empty) as user postgres.
func (srv *Server) URL(db string) string {
	if db == "" {
		db = "postgres"
	}
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", srv.Port, db)
}

// Stop stops the server at once (an immediate shutdown: its data is thrown
// away) and removes its files.
func (srv *Server) Stop() {
	_ = srv.Run(context.Background(), "pg_ctl", "-D", srv.Data, "-m", "immediate", "-w", "stop")
	srv.Remove()
}

// Remove removes the server's files (a stopped server's).
func (srv *Server) Remove() { _ = os.RemoveAll(srv.dir) }
