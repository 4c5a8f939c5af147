// Command aftercommit is the command-line tool of aftercommit: it migrates the
// database (River's tables and the project's own) and, in later versions,
// inspects jobs, prints statistics, checks job args, runs the demo and the
// benchmarks.
//
// Usage:
//
//	aftercommit <command> [flags] [arguments]
//
// Run `aftercommit --help` for the list of commands and
// `aftercommit <command> --help` for one command's flags.
//
// Exit codes: 0 success, 1 failure (database unreachable, migration failed,
// …), 2 bad usage, 130 interrupted.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Exit codes of run and of every command.
const (
	exitOK          = 0
	exitFailure     = 1
	exitUsage       = 2
	exitInterrupted = 130
)

// env is what a command may use of the process: environment variables and
// the two output streams. Tests hand in their own.
type env struct {
	getenv func(string) string
	stdout io.Writer
	stderr io.Writer
}

// command is one subcommand. Adding a subcommand is adding one entry to
// commands.
type command struct {
	name    string
	summary string // one line, shown by `aftercommit --help`
	// run executes the command with the arguments that follow its name and
	// returns the exit code. It must answer --help/-h with its usage on
	// stdout and exit 0.
	run func(ctx context.Context, args []string, e *env) int
}

// commands lists every subcommand, in the order `aftercommit --help` shows
// them. It is filled in init because a command's run may refer to it (help).
var commands []command

func init() {
	commands = []command{
		{name: "migrate", summary: "apply, remove or show the database migrations (River's and aftercommit's)", run: runMigrate},
		{name: "demo", summary: "migrate, play a realistic scenario, wait for the jobs and check every invariant", run: runDemo},
		{name: "jobs", summary: "list jobs, show one, retry or cancel it", run: runJobs},
		{name: "stats", summary: "job statistics per kind and queue from the SQL views (--watch to refresh)", run: runStats},
		{name: "backfill", summary: "recompute the daily donation rollups of a range of days from the donations", run: runBackfill},
		{name: "bench", summary: "benchmark scenarios side by side with their baselines, ratios from one run; --soak D holds the demo load for D", run: runBench},
		{name: "grant-roles", summary: "grant the least-privilege app and worker roles on the schema (internal/dbroles/grants.sql)", run: runGrantRoles},
		{name: "nats", summary: "set up the JetStream stream the events relay publishes to (nats setup)", run: runNATS},
		{name: "check-args", summary: "check that queued jobs decode with this build's job args types (run before a deploy)", run: runCheckArgs},
		{name: "help", summary: "show the help of aftercommit or of one command", run: runHelp},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is the whole program minus the process: it dispatches args to a
// command and returns the exit code.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	e := &env{getenv: getenv, stdout: stdout, stderr: stderr}
	if len(args) == 0 {
		printRootUsage(stderr)
		return exitUsage
	}
	switch name := args[0]; name {
	case "-h", "-help", "--help":
		printRootUsage(stdout)
		return exitOK
	default:
		if strings.HasPrefix(name, "-") {
			fmt.Fprintf(stderr, "aftercommit: unknown flag %s before the command\n", name)
			fmt.Fprintln(stderr, "Run 'aftercommit --help' for usage.")
			return exitUsage
		}
		cmd, ok := findCommand(name)
		if !ok {
			fmt.Fprintf(stderr, "aftercommit: unknown command %q\n", name)
			fmt.Fprintln(stderr, "Run 'aftercommit --help' for usage.")
			return exitUsage
		}
		return cmd.run(ctx, args[1:], e)
	}
}

func findCommand(name string) (command, bool) {
	for _, c := range commands {
		if c.name == name {
			return c, true
		}
	}
	return command{}, false
}

func printRootUsage(w io.Writer) {
	fmt.Fprint(w, `aftercommit: transactional outbox jobs on Postgres and River.

Usage:
  aftercommit <command> [flags] [arguments]

Commands:
`)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, c := range commands {
		fmt.Fprintf(tw, "  %s\t%s\n", c.name, c.summary)
	}
	_ = tw.Flush()
	fmt.Fprint(w, `
Run 'aftercommit <command> --help' for the flags of one command.
Exit codes: 0 success, 1 failure, 2 bad usage, 130 interrupted.
`)
}

func runHelp(ctx context.Context, args []string, e *env) int {
	switch {
	case len(args) == 0, len(args) == 1 && isHelpFlag(args[0]):
		printRootUsage(e.stdout)
		return exitOK
	case len(args) > 1:
		return usageError(e, "help", "help takes at most one command name")
	}
	cmd, ok := findCommand(args[0])
	if !ok {
		return usageError(e, "help", fmt.Sprintf("unknown command %q", args[0]))
	}
	return cmd.run(ctx, []string{"--help"}, e)
}

func isHelpFlag(s string) bool {
	return s == "-h" || s == "-help" || s == "--help"
}

// usageError reports bad usage of a command on stderr and returns exitUsage.
func usageError(e *env, cmdName, msg string) int {
	fmt.Fprintf(e.stderr, "aftercommit %s: %s\n", cmdName, msg)
	fmt.Fprintf(e.stderr, "Run 'aftercommit %s --help' for usage.\n", cmdName)
	return exitUsage
}

// frame is what every command shares: its name, its flag set with
// the database flags (--database-url, --schema), its usage, and the parse
// and connect steps, so that a command's run function holds only its own
// flags and work.
type frame struct {
	name  string
	e     *env
	fs    *flag.FlagSet
	db    dbFlags
	usage func(io.Writer)
}

// newFrame returns the frame of command name, whose usage text printUsage
// writes (calling its second argument where the flags go).
func newFrame(name string, e *env, printUsage func(w io.Writer, printFlags func(io.Writer))) *frame {
	c := &frame{name: name, e: e, fs: newFlagSet(name, e)}
	c.db.register(c.fs)
	c.usage = commandUsage(c.fs, e, printUsage)
	return c
}

// parse parses args (see parseArgs). With noArgs, positional arguments are
// a usage error. ok false: the command stops with code.
func (c *frame) parse(args []string, noArgs bool) (positional []string, code int, ok bool) {
	positional, code, ok = parseArgs(c.fs, c.e, c.name, c.usage, args)
	if ok && noArgs && len(positional) > 0 {
		return nil, c.usageError(fmt.Sprintf("%s takes no arguments, got %s", c.name, strings.Join(positional, " "))), false
	}
	return positional, code, ok
}

// usageError reports a usage error of the command (see usageError).
func (c *frame) usageError(msg string) int { return usageError(c.e, c.name, msg) }

// resolveDB applies the environment and the defaults to the database flags
// not given (see dbFlags.resolve).
func (c *frame) resolveDB() { c.db.resolve(c.fs, c.e) }

// connect resolves the database flags and opens a pool of at most maxConns
// connections (0: 4); see dbFlags.connect. ok false: it has reported why and
// the command stops with code; otherwise the caller closes the pool.
func (c *frame) connect(ctx context.Context, maxConns int32) (pool *pgxpool.Pool, code int, ok bool) {
	c.resolveDB()
	return c.db.connect(ctx, c.e, maxConns)
}

// newFlagSet returns a FlagSet for a command whose errors go to stderr and
// whose usage, printed by parseArgs on --help, goes to stdout.
func newFlagSet(name string, e *env) *flag.FlagSet {
	fs := flag.NewFlagSet("aftercommit "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {} // parseArgs prints usage itself, to the right stream
	return fs
}

// commandUsage returns the usage printer of a command: printText writes the
// command's text and calls its second argument where fs's flags go.
func commandUsage(fs *flag.FlagSet, e *env, printText func(w io.Writer, printFlags func(io.Writer))) func(io.Writer) {
	return func(w io.Writer) {
		printText(w, func(w io.Writer) {
			fs.SetOutput(w)
			fs.PrintDefaults()
			fs.SetOutput(e.stderr)
		})
	}
}

// parseArgs parses args with fs, allowing flags before, between and after
// positional arguments (`migrate down --yes` as well as `migrate --yes
// down`); everything after a lone "--" is positional. It returns the
// positional arguments, or ok=false and the exit code when the command must
// stop: exitOK after printing usage for --help, exitUsage after a bad flag.
func parseArgs(fs *flag.FlagSet, e *env, cmdName string, usage func(io.Writer), args []string) (positional []string, code int, ok bool) {
	for {
		err := fs.Parse(args)
		if errors.Is(err, flag.ErrHelp) {
			usage(e.stdout)
			return nil, exitOK, false
		}
		if err != nil {
			// The flag package has already printed the error to stderr.
			fmt.Fprintf(e.stderr, "Run 'aftercommit %s --help' for usage.\n", cmdName)
			return nil, exitUsage, false
		}
		rest := fs.Args()
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(positional, rest...), exitOK, true
		}
		if len(rest) == 0 {
			return positional, exitOK, true
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
}
