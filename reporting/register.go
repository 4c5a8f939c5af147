package reporting

import (
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
)

// Domain is the name the package registers its queues under.
const Domain = "reporting"

// TopicDonationCreated is the topic reporting consumes to keep the daily
// donation totals fresh. The donations domain declares and publishes it;
// reporting reads its JSON payload (fundraiser_id and status), never the
// publisher's Go type.
const TopicDonationCreated = "donation.created"

// Queue names (River names are "reporting_<name>").
const (
	// QueueBulk runs bulk car-user creations: large transactions, a few at
	// a time per worker process (BulkMaxWorkers).
	QueueBulk = Domain + "_bulk"
	// QueueReports runs car reports and daily rollups: many small,
	// coalesced jobs, never urgent.
	QueueReports = Domain + "_reports"
)

// BulkMaxWorkers is how many bulk creations one worker process runs at once:
// each one inserts up to MaxBulkUserIDs rows in one statement.
const BulkMaxWorkers = 4

// BulkInFlightPerCar is how many bulk creations of one car may be available
// or running at once, across every worker process: half of one process's
// BulkMaxWorkers (a jobs.FairShare, see CreateCarUsersInBulkWorker.FairShareFor).
const BulkInFlightPerCar = BulkMaxWorkers / 2

// Register declares the reporting domain on reg: its queues, every worker,
// and the subscription to donation.created (which the donations domain
// must declare on the same registry, or reg.Err reports the subscription).
// pool is the database the workers read and write.
func Register(reg *jobs.Registry, pool *pgxpool.Pool) {
	reg.AddQueue(Domain, "bulk", 0, &jobs.QueueOpts{MaxWorkers: BulkMaxWorkers})
	reg.AddQueue(Domain, "reports", -5, nil)
	registerCarUsers(reg, pool)
	registerImports(reg, pool)
	registerCarReport(reg, pool)
	registerRollups(reg, pool)
}

// Service is the domain's API for the application: cars and their users,
// reports and rollups, each change in its own outbox transaction (or in the
// caller's, with the …Tx forms).
type Service struct {
	pool *pgxpool.Pool
	ob   *outbox.Outbox
}

// NewService returns the domain's service. ob must be built with
// jobs.NewOutbox from a registry that Register filled.
func NewService(pool *pgxpool.Pool, ob *outbox.Outbox) *Service {
	return &Service{pool: pool, ob: ob}
}
