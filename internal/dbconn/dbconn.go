// Package dbconn opens the Postgres pool of aftercommit's commands (the
// aftercommit CLI and the worker) the same way for both: it parses the
// connection string, applies the command's defaults and schema, checks that
// the server answers within the connection timeout, and turns every failure
// into one line meant for a person that says where, why and what to do,
// without the password.
//
// Every message starts with the command's name (Opts.Component), e.g.
//
//	worker: cannot reach Postgres at 127.0.0.1:1 (connection refused): start Postgres or set DATABASE_URL / --database-url
package dbconn

import (
	"context"
	"errors"
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

// DefaultConnectTimeout bounds each connection attempt when neither the
// connection string (connect_timeout, PGCONNECT_TIMEOUT) nor
// Opts.ConnectTimeout sets a timeout.
const DefaultConnectTimeout = 10 * time.Second

// DefaultSource is how parse errors name where the connection string came
// from when Opts.Source is empty.
const DefaultSource = "--database-url / DATABASE_URL"

// fix is the advice that closes the messages about a wrong or unreachable
// server. It is the same for every command: both take DATABASE_URL and
// --database-url.
const fix = "set DATABASE_URL / --database-url"

// Opts tune ParseConfig and Open. A nil *Opts takes the defaults.
type Opts struct {
	// Component starts every message, followed by ": ", e.g. "worker".
	// Defaults to "dbconn".
	Component string

	// Source names where the connection string came from in parse errors,
	// e.g. "--database-url" or "DATABASE_URL". Defaults to DefaultSource.
	Source string

	// Schema, when not empty, becomes the search_path of every connection
	// (see SetSchema).
	Schema string

	// MaxConns, when positive, sizes the pool, overriding the connection
	// string's pool_max_conns. Zero keeps pool_max_conns, else pgxpool's
	// default.
	MaxConns int32

	// ConnectTimeout bounds each connection attempt when the connection
	// string sets none. Defaults to DefaultConnectTimeout.
	ConnectTimeout time.Duration
}

func (o *Opts) component() string {
	if o == nil || o.Component == "" {
		return "dbconn"
	}
	return o.Component
}

// Error is a failure to parse a connection string or to connect. Its
// Error() is Line: one line for a person, starting with the component's
// name, without the password. Err is the cause, for errors.Is and errors.As;
// its text may hold the connection string, so never print it.
type Error struct {
	// Line is the whole message.
	Line string
	// Err is the underlying error: a pgx or network error, or
	// ErrInterrupted.
	Err error
}

// Error returns Line.
func (e *Error) Error() string { return e.Line }

// Unwrap returns Err.
func (e *Error) Unwrap() error { return e.Err }

// ErrInterrupted is wrapped by the *Error that Connect and Open return when
// their context ended (a signal) before the server answered. The *Error's
// line is "<component>: interrupted".
var ErrInterrupted = errors.New("dbconn: interrupted")

// ParseConfig parses a connection string (URL or keyword/value) and applies
// opts: the connect timeout when the string sets none, the pool size and
// the schema; its connections detect a vanished peer within seconds
// (KeepAliveIdle, UserTimeout). On failure it returns an *Error that says why without
// repeating the string, which may hold a password.
func ParseConfig(raw string, opts *Opts) (*pgxpool.Config, error) {
	if opts == nil {
		opts = &Opts{}
	}
	cfg, err := pgxpool.ParseConfig(raw)
	if err != nil {
		source := opts.Source
		if source == "" {
			source = DefaultSource
		}
		return nil, &Error{
			Line: fmt.Sprintf("%s: cannot parse the database URL given by %s: %s",
				opts.component(), source, parseReason(raw, err)),
			Err: err,
		}
	}
	if cfg.ConnConfig.ConnectTimeout <= 0 {
		cfg.ConnConfig.ConnectTimeout = opts.ConnectTimeout
		if cfg.ConnConfig.ConnectTimeout <= 0 {
			cfg.ConnConfig.ConnectTimeout = DefaultConnectTimeout
		}
	}
	if opts.MaxConns > 0 {
		cfg.MaxConns = opts.MaxConns
	}
	// Dead connections are found out in seconds, not minutes (dial.go).
	cfg.ConnConfig.DialFunc = newDialer().DialContext
	SetSchema(cfg, opts.Schema)
	return cfg, nil
}

// SetSchema makes schema the search_path of cfg's connections, quoted so
// that a name with capitals, spaces or commas is taken as is, exactly as
// River takes it. An empty schema leaves the search_path alone.
func SetSchema(cfg *pgxpool.Config, schema string) {
	if schema != "" {
		cfg.ConnConfig.RuntimeParams["search_path"] = pgx.Identifier{schema}.Sanitize()
	}
}

// Open is ParseConfig followed by Connect.
func Open(ctx context.Context, raw string, opts *Opts) (*pgxpool.Pool, error) {
	cfg, err := ParseConfig(raw, opts)
	if err != nil {
		return nil, err
	}
	return Connect(ctx, cfg, opts.component())
}

// Connect opens a pool on cfg (from ParseConfig) and checks that the server
// answers, within the connect timeout for each of its addresses. On failure
// it returns an *Error whose line, starting with component, says where, why
// and what to do; it wraps ErrInterrupted when ctx ended first.
func Connect(ctx context.Context, cfg *pgxpool.Config, component string) (*pgxpool.Pool, error) {
	if component == "" {
		component = (*Opts)(nil).component()
	}
	timeout := cfg.ConnConfig.ConnectTimeout
	if timeout <= 0 {
		timeout = DefaultConnectTimeout
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, &Error{Line: describeConnectError(ctx, component, cfg.ConnConfig, timeout, err), Err: err}
	}
	// The connect timeout applies to each address in turn.
	attempts := time.Duration(1 + len(cfg.ConnConfig.Fallbacks))
	pingCtx, cancel := context.WithTimeout(ctx, attempts*timeout)
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil {
		pool.Close()
		if ctx.Err() != nil {
			return nil, &Error{Line: component + ": interrupted", Err: ErrInterrupted}
		}
		return nil, &Error{Line: describeConnectError(pingCtx, component, cfg.ConnConfig, timeout, err), Err: err}
	}
	return pool, nil
}

// describeConnectError turns a failed first connection into one line that
// says where, why and what to do.
func describeConnectError(ctx context.Context, component string, cfg *pgx.ConnConfig, timeout time.Duration, err error) string {
	where := serverAddress(&cfg.Config)

	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "28P01", "28000": // invalid_password, invalid_authorization_specification
			return fmt.Sprintf("%s: Postgres at %s refused user %q (%s): check the user and password, or %s",
				component, where, cfg.User, OneLine(pgErr.Message), fix)
		case "3D000": // invalid_catalog_name
			return fmt.Sprintf("%s: Postgres at %s has no database %q: create it (createdb %s) or %s",
				component, where, cfg.Database, cfg.Database, fix)
		case "57P03": // cannot_connect_now
			return fmt.Sprintf("%s: Postgres at %s is not accepting connections yet (%s): wait for it to start",
				component, where, OneLine(pgErr.Message))
		default:
			return fmt.Sprintf("%s: Postgres at %s refused the connection (%s, SQLSTATE %s)",
				component, where, OneLine(pgErr.Message), pgErr.Code)
		}
	}
	return fmt.Sprintf("%s: cannot reach Postgres at %s (%s): start Postgres or %s",
		component, where, networkReason(ctx, timeout, err), fix)
}

// networkReason names the cause of a connection failure below the protocol
// level in a few words. A ctx that ended counts as a timeout.
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

// isNetTimeout reports whether err is a net.Error that timed out.
func isNetTimeout(err error) bool {
	var netErr net.Error
	return errors.As(err, &netErr) && netErr.Timeout()
}

// serverAddress names the first server of cfg: host:port, or the Unix
// socket's path, and how many fallback addresses follow it.
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
	// sslmode=prefer (pgx's default) adds a non-TLS fallback to the same
	// server: count other servers only.
	others := map[string]bool{}
	for _, fb := range cfg.Fallbacks {
		if fb.Host != cfg.Host || fb.Port != cfg.Port {
			others[net.JoinHostPort(fb.Host, strconv.Itoa(int(fb.Port)))] = true
		}
	}
	if n := len(others); n > 0 {
		addr += fmt.Sprintf(" (and %d other address", n)
		if n > 1 {
			addr += "es"
		}
		addr += ")"
	}
	return addr
}

// lastCause is the innermost, most specific part of a chain of wrapped
// errors, on one line: the outer ones repeat the address and, in some pgx
// versions, parts of the connection string. For errors joined by errors.Join
// it takes the first.
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
	return OneLine(err.Error())
}

// OneLine folds s onto one line: runs of white space, line breaks included,
// become one space. Messages built from server or driver errors go through
// it so that a command's error stays one line.
func OneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// parseReason explains why a connection string does not parse, on one line,
// without repeating the string or its password.
func parseReason(raw string, err error) string {
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
	return OneLine(scrubSecrets(reason, raw))
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
