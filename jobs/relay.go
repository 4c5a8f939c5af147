package jobs

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/aftercommit/aftercommit/outbox/relay"
)

// NewRelay returns the relay that moves committed outbox rows into River
// for reg's kinds: a row's args are decoded strictly (Registry.DecodeArgs;
// an unknown kind or args a worker would cancel make a dead row), NULL
// queue and priority take the kind's registration, a queue must be one of
// reg's, rows of a queue-locked kind are coalesced by their lock key, and
// the jobs of a Sequencer's kind join their sequences. cfg may be nil; its
// Decode, KindDefaults, Queues, LockKey and Sequence are replaced. client must be built by NewClient from the same reg (its
// queue-lock middleware keys the relayed jobs); an insert-only client is
// enough. Start it beside the client; cmd/worker does.
func NewRelay(pool *pgxpool.Pool, client *river.Client[pgx.Tx], reg *Registry, cfg *relay.Config) (*relay.Relay, error) {
	if reg == nil {
		return nil, errors.New("jobs: nil registry")
	}
	var c relay.Config
	if cfg != nil {
		c = *cfg
	}
	c.Decode = reg.DecodeArgs
	c.KindDefaults = reg.KindDefaults
	c.Queues = reg.QueueNames()
	c.LockKey = reg.queueLockKey
	c.Sequence = reg.sequenceOf
	return relay.New(pool, client, &c)
}

// unwrapArgs returns the Go value behind args the relay inserts
// (relay.Args), or args itself.
func unwrapArgs(args river.JobArgs) river.JobArgs {
	if u, ok := args.(interface{ Unwrap() river.JobArgs }); ok {
		return u.Unwrap()
	}
	return args
}

// outboxCreatedAtMiddleware gives a relayed job the created_at of its
// outbox row (when its transaction began), so the queue latency River and
// the views report includes the time the job spent in the outbox.
type outboxCreatedAtMiddleware struct{ river.MiddlewareDefaults }

var _ rivertype.JobInsertMiddleware = &outboxCreatedAtMiddleware{}

// InsertMany implements rivertype.JobInsertMiddleware.
func (*outboxCreatedAtMiddleware) InsertMany(ctx context.Context, manyParams []*rivertype.JobInsertParams, doInner func(context.Context) ([]*rivertype.JobInsertResult, error)) ([]*rivertype.JobInsertResult, error) {
	for _, p := range manyParams {
		if a, ok := p.Args.(interface{ OutboxCreatedAt() time.Time }); ok && p.CreatedAt == nil {
			at := a.OutboxCreatedAt()
			p.CreatedAt = &at
		}
	}
	return doInner(ctx)
}
