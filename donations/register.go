package donations

import (
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
)

// Domain is the name the package registers its queues under.
const Domain = "donations"

// TopicDonationCreated is published with every donation, in its transaction.
const TopicDonationCreated = "donation.created"

// Queue names (River names are "donations_<name>").
const (
	// QueueDefault runs the email flag: a donor is waiting for the thank-you
	// flow to notice.
	QueueDefault = Domain + "_default"
	// QueueCounters runs counter folds and counter caches: many small jobs,
	// never urgent.
	QueueCounters = Domain + "_counters"
)

// Register declares the donations domain on reg: its queues, the
// donation.created topic, and every worker. pool is the database the workers
// read and write.
func Register(reg *jobs.Registry, pool *pgxpool.Pool) {
	reg.AddQueue(Domain, "default", 100, nil)
	reg.AddQueue(Domain, "counters", -5, nil)
	reg.AddTopic(Domain, TopicDonationCreated)
	registerEmailFlag(reg, pool)
	registerTracking(reg, pool)
	registerCounters(reg, pool)
}

// Service is the domain's API for the application: donations and email
// tracking, each in its own outbox transaction.
type Service struct {
	pool *pgxpool.Pool
	ob   *outbox.Outbox
}

// NewService returns the domain's service. ob must be built with
// jobs.NewOutbox from a registry that Register filled.
func NewService(pool *pgxpool.Pool, ob *outbox.Outbox) *Service {
	return &Service{pool: pool, ob: ob}
}
