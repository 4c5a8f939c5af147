package natsrelay

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Defaults of StreamOptions.
const (
	// MaxAgeDefault is how long the stream keeps a message.
	MaxAgeDefault = 7 * 24 * time.Hour
	// DuplicatesDefault is JetStream's de-duplication window: a message
	// whose Nats-Msg-Id the stream saw within it is dropped.
	DuplicatesDefault = 2 * time.Minute
)

// StreamOptions shape the stream SetupStream creates. The zero value takes
// every default.
type StreamOptions struct {
	// Name is the stream's name. Defaults to StreamDefault.
	Name string
	// SubjectPrefix: the stream holds "<SubjectPrefix>.>". Defaults to
	// SubjectPrefixDefault.
	SubjectPrefix string
	// MaxAge is how long a message is kept (limits retention: consumers
	// come and go, the stream keeps the history). Defaults to
	// MaxAgeDefault.
	MaxAge time.Duration
	// MaxBytes bounds the stream's size; the oldest messages go first.
	// Defaults to 0: no bound but MaxAge.
	MaxBytes int64
	// Duplicates is the de-duplication window. The relay does not depend on
	// it (it finds its place in the stream from the stream's last message,
	// see Relay), but a publisher that retries by Nats-Msg-Id does.
	// Defaults to DuplicatesDefault.
	Duplicates time.Duration
	// Replicas is the number of copies in a JetStream cluster (1, 3 or 5).
	// Defaults to 1.
	Replicas int
	// Memory stores messages in memory instead of files: faster, and lost
	// when the server restarts. Defaults to false (file storage).
	Memory bool
}

func (o StreamOptions) withDefaults() StreamOptions {
	if o.Name == "" {
		o.Name = StreamDefault
	}
	if o.SubjectPrefix == "" {
		o.SubjectPrefix = SubjectPrefixDefault
	}
	if o.MaxAge == 0 {
		o.MaxAge = MaxAgeDefault
	}
	if o.Duplicates == 0 {
		o.Duplicates = DuplicatesDefault
	}
	if o.Replicas == 0 {
		o.Replicas = 1
	}
	return o
}

// StreamConfig returns the JetStream configuration SetupStream applies, or
// an ErrConfig error.
func (o StreamOptions) StreamConfig() (jetstream.StreamConfig, error) {
	o = o.withDefaults()
	switch {
	case !validStream(o.Name):
		return jetstream.StreamConfig{}, fmt.Errorf("%w: stream name %q: use 1 to 255 letters, digits, '-' or '_'", ErrConfig, o.Name)
	case !validPrefix(o.SubjectPrefix):
		return jetstream.StreamConfig{}, fmt.Errorf("%w: subject prefix %q: use dot-separated words of letters, digits, '-' or '_'", ErrConfig, o.SubjectPrefix)
	case o.MaxAge < 0 || o.MaxBytes < 0 || o.Duplicates < 0:
		return jetstream.StreamConfig{}, fmt.Errorf("%w: max age, max bytes and duplicates window must not be negative", ErrConfig)
	case o.Replicas != 1 && o.Replicas != 3 && o.Replicas != 5:
		return jetstream.StreamConfig{}, fmt.Errorf("%w: replicas must be 1, 3 or 5, got %d", ErrConfig, o.Replicas)
	case o.MaxAge > 0 && o.Duplicates > o.MaxAge:
		return jetstream.StreamConfig{}, fmt.Errorf("%w: the duplicates window (%s) is longer than the max age (%s)", ErrConfig, o.Duplicates, o.MaxAge)
	}
	storage := jetstream.FileStorage
	if o.Memory {
		storage = jetstream.MemoryStorage
	}
	maxBytes := o.MaxBytes
	if maxBytes == 0 {
		maxBytes = -1
	}
	return jetstream.StreamConfig{
		Name:        o.Name,
		Description: "aftercommit: outbox events relayed from Postgres (CloudEvents 1.0 JSON)",
		Subjects:    []string{o.SubjectPrefix + ".>"},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      o.MaxAge,
		MaxBytes:    maxBytes,
		MaxMsgs:     -1,
		Duplicates:  o.Duplicates,
		Storage:     storage,
		Replicas:    o.Replicas,
		AllowDirect: true,
	}, nil
}

// SetupStream creates the stream, or updates an existing one of the same
// name to the options (JetStream refuses some changes, e.g. of storage,
// with an error).
func SetupStream(ctx context.Context, js jetstream.JetStream, opts StreamOptions) (jetstream.Stream, error) {
	cfg, err := opts.StreamConfig()
	if err != nil {
		return nil, err
	}
	s, err := js.CreateOrUpdateStream(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("natsrelay: setting up stream %s: %w", cfg.Name, err)
	}
	return s, nil
}

// openStream returns the stream, created with the options when it does
// not exist and create is true.
func openStream(ctx context.Context, js jetstream.JetStream, opts StreamOptions, create bool) (jetstream.Stream, error) {
	s, err := js.Stream(ctx, opts.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) && create {
		return SetupStream(ctx, js, opts)
	}
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("natsrelay: %w: stream %s (create it with `aftercommit nats setup`)", ErrNoStream, opts.Name)
	}
	if err != nil {
		return nil, fmt.Errorf("natsrelay: looking up stream %s: %w", opts.Name, err)
	}
	return s, nil
}
