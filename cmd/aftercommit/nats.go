package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/aftercommit/aftercommit/outbox/natsrelay"
)

func printNATSUsage(w io.Writer, printFlags func(io.Writer)) {
	fmt.Fprint(w, `Usage:
  aftercommit nats setup [--nats-url URLS] [--stream NAME] [--subject-prefix P] [--replicas N]
                         [--max-age D] [--max-bytes N] [--duplicates D] [--memory]

Creates the JetStream stream the events relay (cmd/worker --nats-url)
publishes to, or updates an existing one to these settings, and prints it:

  subjects     <prefix>.> (an event goes to <prefix>.<topic>.<key>)
  retention    limits: messages stay for --max-age (and within --max-bytes),
               whoever consumed them; a consumer reads from any point
  storage      file (or --memory: lost when the server restarts)
  duplicates   the de-duplication window of Nats-Msg-Id
  replicas     copies in a JetStream cluster (1, 3 or 5)

--nats-url takes a comma-separated list of a cluster's servers. A worker
creates a missing stream with the defaults by itself; run this to choose
other settings, or before the workers start.

Exit codes: 0 set up, 1 failure, 2 bad usage, 130 interrupted.

Flags:
`)
	printFlags(w)
}

func runNATS(ctx context.Context, args []string, e *env) int {
	fs := newFlagSet("nats", e)
	usage := commandUsage(fs, e, printNATSUsage)
	url := fs.String("nats-url", "", "NATS `URLs`, comma-separated (env AFTERCOMMIT_NATS_URL, else nats://127.0.0.1:4222)")
	var o natsrelay.StreamOptions
	fs.StringVar(&o.Name, "stream", natsrelay.StreamDefault, "the stream's `name`")
	fs.StringVar(&o.SubjectPrefix, "subject-prefix", natsrelay.SubjectPrefixDefault, "the subjects' `prefix`")
	fs.IntVar(&o.Replicas, "replicas", 1, "`copies` in a JetStream cluster: 1, 3 or 5")
	fs.DurationVar(&o.MaxAge, "max-age", natsrelay.MaxAgeDefault, "how long a message is kept (`duration`)")
	fs.Int64Var(&o.MaxBytes, "max-bytes", 0, "the stream's largest size in `bytes`, oldest messages dropped first (0: no bound)")
	fs.DurationVar(&o.Duplicates, "duplicates", natsrelay.DuplicatesDefault, "the de-duplication window (`duration`)")
	fs.BoolVar(&o.Memory, "memory", false, "keep messages in memory instead of files")

	positional, code, ok := parseArgs(fs, e, "nats", usage, args)
	if !ok {
		return code
	}
	switch {
	case len(positional) == 0:
		return usageError(e, "nats", "missing action: setup")
	case positional[0] != "setup":
		return usageError(e, "nats", fmt.Sprintf("unknown action %q: want setup", positional[0]))
	case len(positional) > 1:
		return usageError(e, "nats", fmt.Sprintf("nats setup takes no arguments, got %s", strings.Join(positional[1:], " ")))
	}
	if o.MaxAge == 0 || o.Duplicates == 0 {
		return usageError(e, "nats", "--max-age and --duplicates must be positive")
	}
	if _, err := o.StreamConfig(); err != nil {
		return usageError(e, "nats", strings.TrimPrefix(err.Error(), natsrelay.ErrConfig.Error()+": "))
	}
	if *url == "" {
		*url = e.getenv("AFTERCOMMIT_NATS_URL")
	}
	if *url == "" {
		*url = nats.DefaultURL
	}

	nc, err := nats.Connect(*url, nats.Name("aftercommit-cli"), nats.Timeout(10*time.Second))
	if err != nil {
		return reportError(ctx, e, fmt.Errorf("aftercommit nats setup: connecting to NATS: %w", err))
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return reportError(ctx, e, fmt.Errorf("aftercommit nats setup: %w", err))
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	s, err := natsrelay.SetupStream(cctx, js, o)
	if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
		return reportError(ctx, e, fmt.Errorf("aftercommit nats setup: the NATS server has no JetStream (start nats-server with -js): %w", err))
	}
	if err != nil {
		return reportError(ctx, e, fmt.Errorf("aftercommit %w", err))
	}
	c := s.CachedInfo().Config
	storage := "file"
	if c.Storage == jetstream.MemoryStorage {
		storage = "memory"
	}
	maxBytes := "none"
	if c.MaxBytes > 0 {
		maxBytes = fmt.Sprintf("%d bytes", c.MaxBytes)
	}
	fmt.Fprintf(e.stdout, "stream %s: subjects %s, limits retention, max age %s, max bytes %s, duplicates window %s, %s storage, %d replica(s); %d messages\n",
		c.Name, strings.Join(c.Subjects, ","), c.MaxAge, maxBytes, c.Duplicates, storage, c.Replicas, s.CachedInfo().State.Msgs)
	return exitOK
}
