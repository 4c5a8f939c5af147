package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// defaultDatabaseURL is used when neither --database-url nor DATABASE_URL is
// given: the local development server.
const defaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// defaultConnectTimeout bounds the first connection when the URL has no
// connect_timeout (nor PGCONNECT_TIMEOUT).
const defaultConnectTimeout = 10 * time.Second

// dbFlags are the connection flags shared by every command that talks to the
// database.
type dbFlags struct {
	url    string
	schema string
}

// register adds --database-url and --schema to fs. Their defaults are
// resolved by resolve (flag, else environment, else default), so that --help
// never prints a URL, and its password, taken from the environment.
func (f *dbFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.url, "database-url", "",
		"Postgres connection URL or keyword/value string\n(default $DATABASE_URL, else "+defaultDatabaseURL+")")
	fs.StringVar(&f.schema, "schema", "",
		"schema that holds River's and aftercommit's tables\n(default $AFTERCOMMIT_SCHEMA, else the connection's search_path)")
}

// resolve applies the environment and the defaults to the flags not given.
func (f *dbFlags) resolve(fs *flag.FlagSet, e *env) {
	given := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { given[fl.Name] = true })
	// An empty URL would mean libpq's defaults (PGHOST, a Unix socket, …);
	// take it as not given.
	if f.url == "" {
		f.url = e.getenv("DATABASE_URL")
	}
	if f.url == "" {
		f.url = defaultDatabaseURL
	}
	// An explicit --schema "" overrides AFTERCOMMIT_SCHEMA: use search_path.
	if !given["schema"] {
		f.schema = e.getenv("AFTERCOMMIT_SCHEMA")
	}
}

// open connects to the database and checks it answers, within the
// connection timeout. On failure it returns an error whose text is one line
// meant for a person, without the password.
func (f *dbFlags) open(ctx context.Context) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(f.url)
	if err != nil {
		return nil, errors.New(describeParseError(f.url, err))
	}
	cfg.MaxConns = 4
	if f.schema != "" {
		// Quoted, so a schema named with capitals or commas is taken as is.
		cfg.ConnConfig.RuntimeParams["search_path"] = pgx.Identifier{f.schema}.Sanitize()
	}
	if cfg.ConnConfig.ConnectTimeout <= 0 {
		cfg.ConnConfig.ConnectTimeout = defaultConnectTimeout
	}
	timeout := cfg.ConnConfig.ConnectTimeout

	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, errors.New(describeConnectError(ctx, cfg.ConnConfig, timeout, err))
	}
	// The connect timeout applies to each address in turn.
	attempts := time.Duration(1 + len(cfg.ConnConfig.Fallbacks))
	pingCtx, cancel := context.WithTimeout(ctx, attempts*timeout)
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil {
		pool.Close()
		if ctx.Err() != nil {
			return nil, errInterrupted
		}
		return nil, errors.New(describeConnectError(pingCtx, cfg.ConnConfig, timeout, err))
	}
	return pool, nil
}

// errInterrupted is returned when the command's context ended (SIGINT or
// SIGTERM) before the work was done.
var errInterrupted = errors.New("aftercommit: interrupted")

// describeParseError explains why a connection string does not parse,
// without repeating the string (it may hold a password).
func describeParseError(raw string, err error) string {
	reason := err.Error()
	var pce *pgconn.ParseConfigError
	if errors.As(err, &pce) {
		// Render the error without the connection string it carries.
		anon := *pce
		anon.ConnString = ""
		reason = strings.TrimPrefix(anon.Error(), "cannot parse ``: ")
	}
	// url.Error repeats the URL verbatim; keep only its cause.
	var ue *url.Error
	if errors.As(err, &ue) && ue.Err != nil {
		reason = strings.ReplaceAll(reason, ue.Error(), ue.Err.Error())
	}
	reason = scrubSecrets(reason, raw)
	return "aftercommit: cannot parse the database URL given by --database-url / DATABASE_URL: " + oneLine(reason)
}

// scrubSecrets removes the connection string and any password in it from s.
func scrubSecrets(s, raw string) string {
	var secrets []string
	if raw != "" {
		secrets = append(secrets, raw)
	}
	if u, err := url.Parse(raw); err == nil && u.User != nil {
		if pw, ok := u.User.Password(); ok && pw != "" {
			secrets = append(secrets, pw, url.QueryEscape(pw), url.PathEscape(pw))
		}
	} else if i := strings.Index(raw, "://"); i >= 0 {
		// An unparsable URL: take what sits between the first ':' of the
		// user info and the last '@'.
		rest := raw[i+3:]
		if at := strings.LastIndex(rest, "@"); at >= 0 {
			if c := strings.Index(rest[:at], ":"); c >= 0 && c+1 < at {
				secrets = append(secrets, rest[c+1:at])
			}
		}
	}
	for _, kv := range strings.Fields(raw) {
		if pw, ok := strings.CutPrefix(kv, "password="); ok && pw != "" {
			secrets = append(secrets, strings.Trim(pw, "'"))
		}
	}
	for _, sec := range secrets {
		s = strings.ReplaceAll(s, sec, "xxxxx")
	}
	return s
}

// describeConnectError turns a failed first connection into one line that
// says where, why and what to do.
func describeConnectError(ctx context.Context, cfg *pgx.ConnConfig, timeout time.Duration, err error) string {
	where := serverAddress(&cfg.Config)
	const fix = "set DATABASE_URL / --database-url"

	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "28P01", "28000": // invalid_password, invalid_authorization_specification
			return fmt.Sprintf("aftercommit: Postgres at %s refused user %q (%s): check the user and password, or %s",
				where, cfg.User, oneLine(pgErr.Message), fix)
		case "3D000": // invalid_catalog_name
			return fmt.Sprintf("aftercommit: Postgres at %s has no database %q: create it (createdb %s) or %s",
				where, cfg.Database, cfg.Database, fix)
		case "57P03": // cannot_connect_now
			return fmt.Sprintf("aftercommit: Postgres at %s is not accepting connections yet (%s): wait for it to start",
				where, oneLine(pgErr.Message))
		default:
			return fmt.Sprintf("aftercommit: Postgres at %s refused the connection (%s, SQLSTATE %s)",
				where, oneLine(pgErr.Message), pgErr.Code)
		}
	}
	return fmt.Sprintf("aftercommit: cannot reach Postgres at %s (%s): start Postgres or %s",
		where, networkReason(ctx, timeout, err), fix)
}

// networkReason names the cause of a connection failure below the protocol
// level in a few words.
func networkReason(ctx context.Context, timeout time.Duration, err error) string {
	var dnsErr *net.DNSError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case pgconn.Timeout(err), errors.Is(err, context.DeadlineExceeded), ctx.Err() != nil, isNetTimeout(err):
		return "no answer within " + timeout.String()
	case errors.As(err, &dnsErr):
		return fmt.Sprintf("cannot resolve host %q", dnsErr.Name)
	case errors.Is(err, syscall.EHOSTUNREACH):
		return "host unreachable"
	case errors.Is(err, syscall.ENETUNREACH):
		return "network unreachable"
	case errors.Is(err, syscall.ENOENT):
		return "no such socket"
	case errors.Is(err, syscall.EACCES):
		return "permission denied"
	}
	return lastCause(err)
}

func isNetTimeout(err error) bool {
	var netErr net.Error
	return errors.As(err, &netErr) && netErr.Timeout()
}

// serverAddress names the first server of cfg: host:port, or the Unix
// socket's path.
func serverAddress(cfg *pgconn.Config) string {
	host := cfg.Host
	if host == "" {
		host = "localhost"
	}
	var addr string
	if strings.HasPrefix(host, "/") {
		addr = fmt.Sprintf("%s/.s.PGSQL.%d", strings.TrimSuffix(host, "/"), cfg.Port)
	} else {
		addr = net.JoinHostPort(host, strconv.Itoa(int(cfg.Port)))
	}
	if n := len(cfg.Fallbacks); n > 0 {
		addr += fmt.Sprintf(" (and %d other address", n)
		if n > 1 {
			addr += "es"
		}
		addr += ")"
	}
	return addr
}

// lastCause is the innermost, most specific part of a chain of wrapped
// errors, on one line. For errors joined by errors.Join it takes the first.
func lastCause(err error) string {
	for {
		if joined, ok := err.(interface{ Unwrap() []error }); ok {
			if errs := joined.Unwrap(); len(errs) > 0 {
				err = errs[0]
				continue
			}
		}
		inner := errors.Unwrap(err)
		if inner == nil {
			break
		}
		err = inner
	}
	return oneLine(err.Error())
}

// oneLine folds s onto one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
