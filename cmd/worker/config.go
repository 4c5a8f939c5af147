package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/internal/dbconn"
	"github.com/aftercommit/aftercommit/internal/devdb"
	"github.com/aftercommit/aftercommit/outbox/natsrelay"
)

// Defaults of the flags.
const (
	// databaseURLDefault is the local development server.
	databaseURLDefault = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	// queuesDefault works every queue the domains declare, plus River's
	// default queue.
	queuesDefault = queuesAll
	// maxWorkersDefault keeps each queue's own number of workers, which
	// its domain derives from the queue's weight.
	maxWorkersDefault = 0
	// shutdownTimeoutDefault is how long running jobs may take to finish
	// after a signal before their contexts are cancelled.
	shutdownTimeoutDefault = 30 * time.Second
	// logLevelDefault is the lowest level logged.
	logLevelDefault = "info"
	// httpAddrDefault serves /metrics, /healthz, /readyz and the River UI on
	// loopback only: the UI can cancel, retry and delete jobs, so reaching
	// it from the network is a choice made with --http (and, unless a proxy
	// guards it, --http-user and --http-password).
	httpAddrDefault = "127.0.0.1:9090"
	// jobTimeoutDefault is River's: a job's context is cancelled after a
	// minute unless its worker's Timeout says otherwise.
	jobTimeoutDefault = river.JobTimeoutDefault
	// rescueAfterDefault is how long a job may stay running before the
	// leader takes it for stuck and retries it: its process died, or the
	// answer to the fetch that started it was lost with its connection, so
	// no process is working it. River's own default is an hour; five
	// minutes is safe because the rescuer also waits out each job's own
	// timeout (a worker's Timeout, else --job-timeout).
	rescueAfterDefault = 5 * time.Minute
	// reindexerDefault keeps River's nightly REINDEX of its job indexes.
	reindexerDefault = "on"
	// relayDefault runs the outbox relay in every worker process.
	relayDefault = "on"
)

// listenOff is the value of --listen-database-url that turns LISTEN off.
const listenOff = "off"

// listenMaxConns sizes the listen pool: River's listener holds one
// connection; the relay opens its own from the same settings.
const listenMaxConns = 2

// httpOff is the value of --http that turns HTTP off. An empty --http does
// too, but an empty environment variable cannot be told from an unset one.
const httpOff = "off"

const (
	// connectTimeoutDefault bounds each connection attempt when the URL has
	// no connect_timeout (nor PGCONNECT_TIMEOUT in the environment).
	connectTimeoutDefault = 10 * time.Second
	// maxConnsDefault sizes the pool when the URL has no pool_max_conns.
	// River holds one connection for LISTEN and a few for its services; a
	// running job holds one while it writes.
	maxConnsDefault = 20
	// schemaMaxLen is Postgres's identifier limit.
	schemaMaxLen = 63
)

// config is the validated configuration of one run.
type config struct {
	// pool is the parsed --database-url with the worker's defaults and the
	// schema's search_path applied. The raw URL is never kept: it may hold a
	// password and must not reach a log.
	pool            *pgxpool.Config
	schema          string
	queues          []string
	maxWorkers      int
	shutdownTimeout time.Duration
	logLevel        slog.Level
	// httpAddr is the address HTTP listens on; empty when it is off.
	httpAddr string
	// httpUser and httpPassword, when set (both or neither), guard /metrics
	// and the River UI with basic auth. The password is never logged.
	httpUser     string
	httpPassword string
	// jobTimeout and rescueAfter are river.Config's JobTimeout and
	// RescueStuckJobsAfter; rescueAfter is longer than jobTimeout.
	jobTimeout  time.Duration
	rescueAfter time.Duration
	// reindexer is false when River's reindexer is off (a worker role that
	// does not own River's tables cannot REINDEX them).
	reindexer bool
	// relay is false when this process does not relay outbox rows into
	// River (some other process must).
	relay bool
	// dev is --dev: apply the migrations at start and, when no database
	// was named, find one with devdb (see setUpDev).
	dev bool
	// urlGiven is true when --database-url or DATABASE_URL named the
	// database; --dev then never starts a container.
	urlGiven bool
	// listen is the parsed --listen-database-url: the pool River's
	// listener and the relay's LISTEN connection use. nil: pool's.
	listen *pgxpool.Config
	// pollOnly is --listen-database-url off: no LISTEN at all.
	pollOnly bool
	// natsURL is --nats-url: the NATS servers (comma-separated) the events
	// relay publishes to; empty: no events relay.
	natsURL string
	// natsStream and natsPrefix are the relay's stream and subject prefix.
	natsStream string
	natsPrefix string
	// devFind is where --dev looks for a database when none was named.
	// Defaults to nil: the default URL, else devdb.StartContainer.
	devFind *devdb.Config
}

// errHelp is returned by parseConfig after printing --help.
var errHelp = flag.ErrHelp

// setting is one flag with its environment variable and default.
type setting struct {
	flag string
	env  string
	def  string
	help string
	val  string
}

// parseConfig reads args, then the environment, then the defaults. Its errors
// are one line meant for a person, starting with "worker: ".
func parseConfig(args []string, getenv func(string) string, stdout io.Writer) (*config, error) {
	settings := []*setting{
		{flag: "database-url", env: "DATABASE_URL", def: databaseURLDefault,
			help: "Postgres connection URL or keyword/value string; pool_max_conns and connect_timeout are honoured"},
		{flag: "listen-database-url", env: "AFTERCOMMIT_LISTEN_DATABASE_URL", def: "",
			help: "where River and the relay LISTEN for new jobs: empty: --database-url; a direct Postgres URL when --database-url goes\nthrough a pooler in transaction mode (PgBouncer); \"" + listenOff + "\": poll only (jobs start up to a poll interval late)"},
		{flag: "schema", env: "AFTERCOMMIT_SCHEMA", def: "",
			help: "schema holding River's and aftercommit's tables (default: the connection's search_path)"},
		{flag: "queues", env: "AFTERCOMMIT_QUEUES", def: queuesDefault,
			help: "comma-separated queues to work, or \"all\": every queue the domains declare and River's default"},
		{flag: "max-workers", env: "AFTERCOMMIT_MAX_WORKERS", def: strconv.Itoa(maxWorkersDefault),
			help: "jobs worked at once, per queue (1.." + strconv.Itoa(river.QueueNumWorkersMax) + "), or 0: each queue's own, from its weight"},
		{flag: "shutdown-timeout", env: "AFTERCOMMIT_SHUTDOWN_TIMEOUT", def: shutdownTimeoutDefault.String(),
			help: "how long running jobs may take to finish after SIGINT/SIGTERM before they are cancelled and requeued"},
		{flag: "job-timeout", env: "AFTERCOMMIT_JOB_TIMEOUT", def: jobTimeoutDefault.String(),
			help: "how long a job may run before its context is cancelled, unless its worker sets its own"},
		{flag: "rescue-after", env: "AFTERCOMMIT_RESCUE_AFTER", def: rescueAfterDefault.String(),
			help: "how long a job may stay running before the leader takes it for stuck (its process died) and retries it; longer than --job-timeout"},
		{flag: "reindexer", env: "AFTERCOMMIT_REINDEXER", def: reindexerDefault,
			help: "on or off: River's nightly REINDEX of its job indexes, which needs table ownership; off for a worker role that does not own them"},
		{flag: "relay", env: "AFTERCOMMIT_RELAY", def: relayDefault,
			help: "on or off: move committed outbox rows (outbox_jobs) into River's job table from this process; any number of processes share the work"},
		{flag: "nats-url", env: "AFTERCOMMIT_NATS_URL", def: "",
			help: "NATS servers with JetStream (comma-separated URLs of a cluster): relay outbox_events to them, exactly once, as\nCloudEvents (one process per stream publishes at a time, the others stand by); empty: no events relay"},
		{flag: "nats-stream", env: "AFTERCOMMIT_NATS_STREAM", def: natsrelay.StreamDefault,
			help: "the JetStream stream the events relay publishes to (created when missing)"},
		{flag: "nats-subject-prefix", env: "AFTERCOMMIT_NATS_SUBJECT_PREFIX", def: natsrelay.SubjectPrefixDefault,
			help: "the subjects' prefix: <prefix>.<topic>.<key>"},
		{flag: "log-level", env: "AFTERCOMMIT_LOG_LEVEL", def: logLevelDefault,
			help: "debug, info, warn or error"},
		{flag: "http", env: "AFTERCOMMIT_HTTP", def: httpAddrDefault,
			help: "host:port serving /metrics, /healthz, /readyz and the River UI at /riverui/; \"\" or off turns HTTP off"},
		{flag: "http-user", env: "AFTERCOMMIT_HTTP_USER", def: "",
			help: "basic auth user guarding /metrics and /riverui/ (with --http-password; default: no auth)"},
		{flag: "http-password", env: "AFTERCOMMIT_HTTP_PASSWORD", def: "",
			help: "basic auth password (with --http-user); prefer the environment variable, flags show in ps"},
	}

	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	for _, s := range settings {
		// The default shown is the built-in one, never the environment's:
		// --help must not print a DATABASE_URL and its password.
		usage := fmt.Sprintf("%s\n(env %s", s.help, s.env)
		if s.def != "" {
			usage += fmt.Sprintf(", default %q", s.def)
		}
		fs.StringVar(&s.val, s.flag, "", usage+")")
	}
	var dev bool
	fs.BoolVar(&dev, "dev", false, "development: apply the migrations at start and, when neither --database-url nor DATABASE_URL\nnames a database and nothing answers at the default URL, start postgres:16 with Docker (testcontainers)\nfor this run, removed on exit (no environment variable: never in production by accident)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			_, _ = fmt.Fprintln(stdout, "Usage: worker [flags]\n\nRuns aftercommit's River workers until SIGINT or SIGTERM.\n\nFlags:")
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			return nil, errHelp
		}
		return nil, fmt.Errorf("worker: %w (see worker --help)", err)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("worker: unexpected argument %q: the worker takes flags only (see worker --help)", fs.Arg(0))
	}

	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	// resolve returns the value of s and how to name where it came from.
	resolve := func(s *setting) (string, string) {
		if given[s.flag] {
			return s.val, "--" + s.flag
		}
		if v := getenv(s.env); v != "" {
			return v, s.env
		}
		return s.def, "--" + s.flag + " default"
	}

	var (
		cfg = config{dev: dev}
		err error
	)
	for _, s := range settings {
		v, src := resolve(s)
		switch s.flag {
		case "database-url":
			cfg.pool, err = parsePoolConfig(v, src)
			cfg.urlGiven = given[s.flag] || getenv(s.env) != ""
		case "listen-database-url":
			switch v {
			case "":
			case listenOff:
				cfg.pollOnly = true
			default:
				cfg.listen, err = dbconn.ParseConfig(v, &dbconn.Opts{Component: "worker", Source: src, ConnectTimeout: connectTimeoutDefault, MaxConns: listenMaxConns})
			}
		case "schema":
			cfg.schema, err = parseSchema(v, src)
		case "queues":
			cfg.queues, err = parseQueues(v, src)
		case "max-workers":
			cfg.maxWorkers, err = parseMaxWorkers(v, src)
		case "shutdown-timeout":
			cfg.shutdownTimeout, err = parseShutdownTimeout(v, src)
		case "job-timeout":
			cfg.jobTimeout, err = parsePositiveDuration(v, src)
		case "rescue-after":
			cfg.rescueAfter, err = parsePositiveDuration(v, src)
		case "reindexer":
			cfg.reindexer, err = parseOnOff(v, src)
		case "relay":
			cfg.relay, err = parseOnOff(v, src)
		case "nats-url":
			cfg.natsURL = strings.TrimSpace(v)
		case "nats-stream":
			cfg.natsStream = v
		case "nats-subject-prefix":
			cfg.natsPrefix = v
		case "log-level":
			err = cfg.logLevel.UnmarshalText([]byte(v))
			if err != nil {
				err = fmt.Errorf("worker: invalid %s %q: want debug, info, warn or error", src, v)
			}
		case "http":
			cfg.httpAddr, err = parseHTTPAddr(v, src)
		case "http-user":
			cfg.httpUser, err = parseHTTPUser(v, src)
		case "http-password":
			cfg.httpPassword = v
		}
		if err != nil {
			return nil, err
		}
	}
	switch {
	case cfg.httpUser != "" && cfg.httpPassword == "":
		return nil, errors.New("worker: --http-user / AFTERCOMMIT_HTTP_USER is set but --http-password / AFTERCOMMIT_HTTP_PASSWORD is not: set both for basic auth, or neither")
	case cfg.httpUser == "" && cfg.httpPassword != "":
		return nil, errors.New("worker: --http-password / AFTERCOMMIT_HTTP_PASSWORD is set but --http-user / AFTERCOMMIT_HTTP_USER is not: set both for basic auth, or neither")
	}
	if cfg.natsURL != "" {
		if err := (&natsrelay.Config{Stream: cfg.natsStream, SubjectPrefix: cfg.natsPrefix, CreateStream: true}).Validate(); err != nil {
			return nil, fmt.Errorf("worker: --nats-stream / --nats-subject-prefix: %w", err)
		}
	}
	if cfg.rescueAfter <= cfg.jobTimeout {
		return nil, fmt.Errorf("worker: --rescue-after (%s) must be longer than --job-timeout (%s): a job would be rescued, and run twice, while it may still be running", cfg.rescueAfter, cfg.jobTimeout)
	}
	// Set here rather than by parsePoolConfig: the URL is parsed, and its
	// errors reported, before the schema is read.
	dbconn.SetSchema(cfg.pool, cfg.schema)
	if cfg.listen != nil {
		dbconn.SetSchema(cfg.listen, cfg.schema)
	}
	return &cfg, nil
}

// parsePoolConfig parses the connection string with the worker's defaults:
// connectTimeoutDefault when it sets no connect_timeout, maxConnsDefault when
// it sets no pool_max_conns. Its errors name src and never repeat raw.
func parsePoolConfig(raw, src string) (*pgxpool.Config, error) {
	opts := &dbconn.Opts{Component: "worker", Source: src, ConnectTimeout: connectTimeoutDefault}
	if !strings.Contains(raw, "pool_max_conns") {
		opts.MaxConns = maxConnsDefault
	}
	return dbconn.ParseConfig(raw, opts)
}

func parseSchema(v, src string) (string, error) {
	switch {
	case len(v) > schemaMaxLen:
		return "", fmt.Errorf("worker: invalid %s %q: longer than %d bytes", src, v, schemaMaxLen)
	case strings.ContainsRune(v, 0):
		return "", fmt.Errorf("worker: invalid %s %q: contains a NUL byte", src, v)
	}
	return v, nil
}

// queueNameRE is River's rule for queue names (river.validateQueueName).
var queueNameRE = regexp.MustCompile(`^(?:[a-z0-9])+(?:[_|\-]?[a-z0-9]+)*$`)

// queueNameMaxLen is River's limit on a queue name.
const queueNameMaxLen = 64

// queuesAll names every declared queue (jobs.AllQueues).
const queuesAll = "all"

// parseQueues returns the queues to work; nil for "all".
func parseQueues(v, src string) ([]string, error) {
	if strings.TrimSpace(v) == "" {
		return nil, fmt.Errorf("worker: invalid %s %q: name at least one queue, or %q", src, v, queuesAll)
	}
	if strings.TrimSpace(v) == queuesAll {
		return nil, nil
	}
	var queues []string
	seen := map[string]bool{}
	for part := range strings.SplitSeq(v, ",") {
		name := strings.TrimSpace(part)
		switch {
		case name == "":
			return nil, fmt.Errorf("worker: invalid %s %q: empty queue name", src, v)
		case len(name) > queueNameMaxLen:
			return nil, fmt.Errorf("worker: invalid %s: queue name %q is longer than %d characters", src, name, queueNameMaxLen)
		case !queueNameRE.MatchString(name):
			return nil, fmt.Errorf("worker: invalid %s: queue name %q must be lowercase letters and digits separated by '_', '-' or '|'", src, name)
		case name == queuesAll:
			return nil, fmt.Errorf("worker: invalid %s %q: queue name %q is reserved: it means every queue, alone", src, v, queuesAll)
		case seen[name]:
			return nil, fmt.Errorf("worker: invalid %s %q: queue %q is listed twice", src, v, name)
		}
		seen[name] = true
		queues = append(queues, name)
	}
	return queues, nil
}

func parseMaxWorkers(v, src string) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < 0 || n > river.QueueNumWorkersMax {
		return 0, fmt.Errorf("worker: invalid %s %q: want a whole number from 0 (each queue's own) to %d", src, v, river.QueueNumWorkersMax)
	}
	return n, nil
}

func parseShutdownTimeout(v, src string) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil || d < 0 {
		return 0, fmt.Errorf("worker: invalid %s %q: want a duration such as 30s or 2m (0 cancels running jobs at once)", src, v)
	}
	return d, nil
}

func parsePositiveDuration(v, src string) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("worker: invalid %s %q: want a positive duration such as 30s or 2m", src, v)
	}
	return d, nil
}

func parseOnOff(v, src string) (bool, error) {
	switch strings.TrimSpace(v) {
	case "on":
		return true, nil
	case "off":
		return false, nil
	}
	return false, fmt.Errorf("worker: invalid %s %q: want on or off", src, v)
}

// parseHTTPAddr accepts host:port with a numeric port (0 picks a free one),
// and "" or "off", which turn HTTP off (returned as "").
func parseHTTPAddr(v, src string) (string, error) {
	v = strings.TrimSpace(v)
	if v == "" || v == httpOff {
		return "", nil
	}
	_, port, err := net.SplitHostPort(v)
	if err == nil {
		var n int
		n, err = strconv.Atoi(port)
		if err == nil && (n < 0 || n > 65535) {
			err = errors.New("port out of range")
		}
	}
	if err != nil {
		return "", fmt.Errorf("worker: invalid %s %q: want host:port such as 127.0.0.1:9090 or :9090, or %q to turn HTTP off", src, v, httpOff)
	}
	return v, nil
}

// parseHTTPUser refuses a user basic auth cannot carry (RFC 7617: no colon).
func parseHTTPUser(v, src string) (string, error) {
	if strings.ContainsAny(v, ":\r\n") {
		return "", fmt.Errorf("worker: invalid %s %q: a basic auth user cannot contain ':' or a line break", src, v)
	}
	return v, nil
}
