package reporting

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
)

// MaxBulkUserIDs is the most distinct user IDs one bulk creation takes. Its
// args then encode to at most about 200 KB of JSON (usually far less: 10,000
// IDs of 7 digits are 80 KB, under the outbox's 128 KiB payload limit). A
// longer list must be split into several jobs.
const MaxBulkUserIDs = 10_000

// MaxCarNameChars is the longest car name CreateCar accepts.
const MaxCarNameChars = 200

// CreateCarUsersInBulkKind is the River kind of CreateCarUsersInBulkArgs.
const CreateCarUsersInBulkKind = "reporting.create_car_users_in_bulk"

// CreateCarUsersInBulkArgs asks for a car to get every user of a list, in
// one transaction with the car's report job. Enqueue it with
// Service.EnqueueCarUsersInBulk, which checks and de-duplicates the list
// first.
//
// Args with more than MaxBulkUserIDs IDs refuse to be encoded, so every
// enqueue path (tx.Enqueue, River's Insert) fails at once with an error
// matching ErrTooManyUserIDs (and outbox.ErrInvalidArgs for the outbox).
//
// The jobs of one car share BulkInFlightPerCar places in the bulk queue
// (CreateCarUsersInBulkWorker.FairShareFor), which only the outbox table
// keeps: an Outbox with outbox.Config.DirectInsert refuses them
// (outbox.ErrSequencedDirect).
type CreateCarUsersInBulkArgs struct {
	// CarID is the car the users are added to.
	CarID int64 `json:"car_id" jobs:"id"`
	// UserIDs are the users to add; duplicates and users the car has
	// already are skipped. Required, each above 0; may be empty.
	UserIDs []int64 `json:"user_ids" jobs:"id"`
	// Import marks a job of an import (Service.ImportCarUsers): it
	// enqueues no report; the import's callback does, once for all its jobs.
	Import bool `json:"import,omitempty"`
}

// Kind implements river.JobArgs.
func (CreateCarUsersInBulkArgs) Kind() string { return CreateCarUsersInBulkKind }

// Validate implements jobs.ArgsValidator: a job names at least one user and
// at most MaxBulkUserIDs distinct ones (each above 0, by its jobs:"id"
// tag). A job that does not is cancelled at its first attempt.
func (a CreateCarUsersInBulkArgs) Validate() error {
	if len(a.UserIDs) == 0 {
		return &jobs.FieldError{Field: "user_ids", Reason: "is empty: give at least one user ID", Err: ErrInvalidInput}
	}
	if len(a.UserIDs) > MaxBulkUserIDs {
		if distinct := len(slices.Compact(slices.Sorted(slices.Values(a.UserIDs)))); distinct > MaxBulkUserIDs {
			return &jobs.FieldError{Field: "user_ids", Reason: fmt.Sprintf("holds %d distinct IDs, more than %d", distinct, MaxBulkUserIDs), Err: ErrTooManyUserIDs}
		}
	}
	return nil
}

// MarshalJSON encodes the args, or refuses more than MaxBulkUserIDs IDs with
// a *ValidationError matching ErrTooManyUserIDs. (The count is of the IDs as
// given: the worker de-duplicates, the service before enqueueing.)
func (a CreateCarUsersInBulkArgs) MarshalJSON() ([]byte, error) {
	if len(a.UserIDs) > MaxBulkUserIDs {
		return nil, tooManyUserIDs(len(a.UserIDs), "")
	}
	type plain CreateCarUsersInBulkArgs // without this method
	return json.Marshal(plain(a))
}

// tooManyUserIDs reports n IDs ("distinct " ones, or "" as given).
func tooManyUserIDs(n int, distinct string) *ValidationError {
	return &ValidationError{
		Field:   "user_ids",
		Message: fmt.Sprintf("%d %sIDs, at most %d per job: split the list into several jobs", n, distinct, MaxBulkUserIDs),
		Err:     ErrTooManyUserIDs,
	}
}

// BulkResult says what a bulk creation did. It is recorded as the output of
// a CreateCarUsersInBulk job.
type BulkResult struct {
	// CarID is the car.
	CarID int64 `json:"car_id"`
	// Requested is the number of IDs given, duplicates included.
	Requested int `json:"requested"`
	// Distinct is the number of distinct IDs.
	Distinct int `json:"distinct"`
	// Inserted is the number of pairs created.
	Inserted int `json:"inserted"`
	// Existing is the number of users the car had already (Distinct -
	// Inserted).
	Existing int `json:"existing"`
	// ReportEnqueued says whether a CarReport job was enqueued (or matched
	// one waiting): only when a pair was created.
	ReportEnqueued bool `json:"report_enqueued"`
}

// CreateCarUsersInBulkWorker works CreateCarUsersInBulkArgs.
type CreateCarUsersInBulkWorker struct {
	river.WorkerDefaults[CreateCarUsersInBulkArgs]
	obs workerOutbox
}

var _ jobs.FairSharer[CreateCarUsersInBulkArgs] = (*CreateCarUsersInBulkWorker)(nil)

// FairShareFor implements jobs.FairSharer: at most BulkInFlightPerCar bulk
// creations of one car are available or running at once; the car's others
// wait pending and start, about in the order they were enqueued, as those
// finish.
//
// Why a fair share: the bulk queue runs large transactions, BulkMaxWorkers
// at a time per process. A car given a long list, an import split into
// many jobs, would otherwise fill every bulk worker, and another car's
// import, however small, would wait behind all of it. In the share, a car
// holds at most half of a process's bulk workers, and another car's job
// waits behind at most BulkInFlightPerCar jobs of each busy car. The price:
// a car alone runs that many at once, however many processes are idle. Not
// a sequence: a car's jobs need no order, each inserts the pairs it lacks,
// and not a queue lock, which would merge the lists.
func (w *CreateCarUsersInBulkWorker) FairShareFor(args CreateCarUsersInBulkArgs) jobs.FairShare {
	return jobs.FairShare{Key: strconv.FormatInt(args.CarID, 10), InFlight: BulkInFlightPerCar}
}

// registerCarUsers registers the bulk creation worker on QueueBulk.
func registerCarUsers(reg *jobs.Registry, pool *pgxpool.Pool) {
	jobs.AddWorker(reg, QueueBulk, &CreateCarUsersInBulkWorker{obs: workerOutbox{pool: pool, reg: reg, kind: CreateCarUsersInBulkKind}})
}

// Work checks the car and the users, inserts the missing pairs, enqueues the
// car's report once, and completes the job, in one outbox transaction: the
// report job goes out with the COMMIT, in one round trip. Input that a
// retry cannot fix (an unknown car or user, a malformed list) cancels the
// job, with nothing written; its error says what to correct.
func (w *CreateCarUsersInBulkWorker) Work(ctx context.Context, job *river.Job[CreateCarUsersInBulkArgs]) error {
	ob, err := w.obs.outbox(ctx)
	if err != nil {
		return err
	}
	_, err = ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
		res, err := createCarUsersTx(ctx, tx, job.Args.CarID, job.Args.UserIDs, !job.Args.Import)
		if err != nil {
			return err
		}
		return jobs.CompleteTx(ctx, tx, job, res)
	})
	if errors.Is(err, ErrInvalidInput) {
		return river.JobCancel(err)
	}
	return err
}

// EnqueueCarUsersInBulk checks userIDs (at least one, each above zero, at
// most MaxBulkUserIDs distinct ones), drops duplicates and enqueues a
// CreateCarUsersInBulk job for the car, in its own transaction. Bad input is
// a *ValidationError (ErrInvalidInput; ErrTooManyUserIDs for a list to
// split) returned before any SQL runs. The car and the users are checked by
// the job, which is cancelled when they are unknown; CreateCarUsersInBulk
// does the same work at once and returns those errors. The job is in its
// car's fair share (CreateCarUsersInBulkWorker.FairShareFor): on an Outbox
// with outbox.Config.DirectInsert the enqueue fails with an error matching
// outbox.ErrSequencedDirect.
func (s *Service) EnqueueCarUsersInBulk(ctx context.Context, carID int64, userIDs []int64) error {
	return s.EnqueueCarUsersInBulkTx(ctx, nil, carID, userIDs)
}

// EnqueueCarUsersInBulkTx is EnqueueCarUsersInBulk in the caller's
// transaction tx: the job commits or rolls back with the caller's rows. In
// a transaction from Outbox.InTx it is written with its COMMIT; in any other
// pgx.Tx before EnqueueCarUsersInBulkTx returns, in one round trip
// (outbox.Outbox.JoinTx). A nil tx is a transaction of its own.
func (s *Service) EnqueueCarUsersInBulkTx(ctx context.Context, tx pgx.Tx, carID int64, userIDs []int64) error {
	args, err := bulkArgs(carID, userIDs)
	if err != nil {
		return err
	}
	_, err = s.ob.JoinTx(ctx, tx, func(_ context.Context, tx *outbox.Tx) error {
		return tx.Enqueue(args, nil)
	})
	return err
}

// bulkArgs checks the input of a bulk creation and returns its args, IDs
// sorted and distinct.
func bulkArgs(carID int64, userIDs []int64) (CreateCarUsersInBulkArgs, error) {
	if carID <= 0 {
		return CreateCarUsersInBulkArgs{}, &ValidationError{Field: "car_id", Message: fmt.Sprintf("must name a car, got %d", carID)}
	}
	ids, err := normalizeUserIDs(userIDs)
	if err != nil {
		return CreateCarUsersInBulkArgs{}, err
	}
	return CreateCarUsersInBulkArgs{CarID: carID, UserIDs: ids}, nil
}

// CreateCarUsersInBulk adds every user of userIDs to the car and enqueues
// the car's report, at once and in one outbox transaction; it is the work
// of a CreateCarUsersInBulk job, for a caller that wants the result now.
//
// The car and the users are checked in two queries, sent with the insert of
// the missing pairs in one round trip; the report job goes out with the
// COMMIT. Duplicates in userIDs and users the car has already are skipped
// (BulkResult counts them); when nothing is new no report is enqueued. An
// unknown car (ErrUnknownCar), unknown users (ErrUnknownUsers, listed in
// the error and in ValidationError.IDs) and malformed lists are
// *ValidationError values matching ErrInvalidInput, and nothing is written
// then.
func (s *Service) CreateCarUsersInBulk(ctx context.Context, carID int64, userIDs []int64) (BulkResult, error) {
	return s.CreateCarUsersInBulkTx(ctx, nil, carID, userIDs)
}

// CreateCarUsersInBulkTx is CreateCarUsersInBulk in the caller's transaction
// tx, as EnqueueCarUsersInBulkTx is EnqueueCarUsersInBulk. After an error
// other than a *ValidationError the transaction is aborted and must be
// rolled back. A nil tx is a transaction of its own.
func (s *Service) CreateCarUsersInBulkTx(ctx context.Context, tx pgx.Tx, carID int64, userIDs []int64) (BulkResult, error) {
	if _, err := bulkArgs(carID, userIDs); err != nil {
		return BulkResult{}, err
	}
	var res BulkResult
	_, err := s.ob.JoinTx(ctx, tx, func(ctx context.Context, tx *outbox.Tx) error {
		var err error
		res, err = createCarUsersTx(ctx, tx, carID, userIDs, true)
		return err
	})
	if err != nil {
		return BulkResult{}, err
	}
	return res, nil
}

// createCarUsersTx is the work of a bulk creation, in tx; with report, it
// enqueues the car's report when a pair was created.
func createCarUsersTx(ctx context.Context, tx *outbox.Tx, carID int64, userIDs []int64, report bool) (BulkResult, error) {
	ids, err := normalizeUserIDs(userIDs)
	if err != nil {
		return BulkResult{}, err
	}
	res := BulkResult{CarID: carID, Requested: len(userIDs), Distinct: len(ids)}

	// One round trip: the two checks and the insert. When a check fails,
	// the insert fails too, on a foreign key (whichever its triggers meet
	// first), and the checks say which error to return; the rollback
	// removes everything.
	b := &pgx.Batch{}
	var (
		carExists bool
		unknown   []int64
		total     int
		inserted  int64
	)
	b.Queue(carExistsSQL, carID).QueryRow(func(row pgx.Row) error { return row.Scan(&carExists) })
	b.Queue(unknownUsersSQL, ids, MaxListedIDs).Query(func(rows pgx.Rows) error {
		var id int64
		_, err := pgx.ForEachRow(rows, []any{&total, &id}, func() error {
			unknown = append(unknown, id)
			return nil
		})
		return err
	})
	b.Queue(insertCarUsersSQL, carID, ids).Exec(func(tag pgconn.CommandTag) error {
		inserted = tag.RowsAffected()
		return nil
	})
	err = tx.SendBatch(ctx, b).Close()
	switch {
	case !carExists && (err == nil || isForeignKey(err, "")):
		return BulkResult{}, unknownCar(carID)
	case len(unknown) > 0:
		return BulkResult{}, idsError("user_ids", "unknown user IDs", unknown, total, ErrUnknownUsers)
	case err != nil:
		return BulkResult{}, fmt.Errorf("reporting: adding %d users to car %d: %w", len(ids), carID, err)
	}

	res.Inserted = int(inserted)
	res.Existing = res.Distinct - res.Inserted
	if res.Inserted > 0 && report {
		if err := tx.Enqueue(CarReportArgs{CarID: carID}, nil); err != nil {
			return BulkResult{}, err
		}
		res.ReportEnqueued = true
	}
	return res, nil
}

// normalizeUserIDs returns ids sorted and without duplicates, or the
// problem with them.
func normalizeUserIDs(ids []int64) ([]int64, error) {
	return normalizeIDs(ids, MaxBulkUserIDs)
}

// normalizeIDs is normalizeUserIDs with at most limit distinct IDs (0: no
// limit).
func normalizeIDs(ids []int64, limit int) ([]int64, error) {
	if len(ids) == 0 {
		return nil, &ValidationError{Field: "user_ids", Message: "is empty: give at least one user ID"}
	}
	out := slices.Clone(ids)
	slices.Sort(out)
	out = slices.Compact(out)
	if n, _ := slices.BinarySearch(out, 1); n > 0 { // out[:n] are <= 0
		return nil, idsError("user_ids", "IDs not above zero", out[:n], n, nil)
	}
	if limit > 0 && len(out) > limit {
		return nil, tooManyUserIDs(len(out), "distinct ")
	}
	return out, nil
}

// AddCarUser adds one user to a car and enqueues the car's report, in one
// outbox transaction; a burst of additions to one car leaves one waiting
// report (CarReport is queue-locked per car). It reports false, enqueueing
// nothing, when the car had the user already. An unknown car or user is a
// *ValidationError matching ErrUnknownCar or ErrUnknownUsers, with nothing
// written.
func (s *Service) AddCarUser(ctx context.Context, carID, userID int64) (added bool, err error) {
	return s.AddCarUserTx(ctx, nil, carID, userID)
}

// AddCarUserTx is AddCarUser in the caller's transaction tx, as
// EnqueueCarUsersInBulkTx is EnqueueCarUsersInBulk: the pair and the report
// job commit or roll back with the caller's rows. After an error other than
// a *ValidationError the caller must roll back. A nil tx is a transaction of
// its own.
func (s *Service) AddCarUserTx(ctx context.Context, tx pgx.Tx, carID, userID int64) (added bool, err error) {
	switch {
	case carID <= 0:
		return false, &ValidationError{Field: "car_id", Message: fmt.Sprintf("must name a car, got %d", carID)}
	case userID <= 0:
		return false, &ValidationError{Field: "user_id", Message: fmt.Sprintf("must name a user, got %d", userID)}
	}
	_, err = s.ob.JoinTx(ctx, tx, func(ctx context.Context, tx *outbox.Tx) error {
		added, err = addCarUser(ctx, tx, carID, userID)
		return err
	})
	return added, err
}

// addCarUser adds the pair and enqueues the car's report in tx.
func addCarUser(ctx context.Context, tx *outbox.Tx, carID, userID int64) (bool, error) {
	tag, err := tx.Exec(ctx, insertCarUserSQL, carID, userID)
	switch {
	case isForeignKey(err, fkCarUsersCar):
		return false, unknownCar(carID)
	case isForeignKey(err, fkCarUsersUser):
		return false, idsError("user_id", "unknown user IDs", []int64{userID}, 1, ErrUnknownUsers)
	case err != nil:
		return false, fmt.Errorf("reporting: adding user %d to car %d: %w", userID, carID, err)
	case tag.RowsAffected() == 0:
		return false, nil
	}
	return true, tx.Enqueue(CarReportArgs{CarID: carID}, nil)
}

// CreateCar creates a car and returns its ID. Its report appears with its
// first user.
func (s *Service) CreateCar(ctx context.Context, name string) (int64, error) {
	return s.CreateCarTx(ctx, nil, name)
}

// CreateCarTx is CreateCar in the caller's transaction tx (nil: on its own).
func (s *Service) CreateCarTx(ctx context.Context, tx pgx.Tx, name string) (int64, error) {
	name = strings.TrimSpace(name)
	switch {
	case name == "":
		return 0, &ValidationError{Field: "name", Message: "is required"}
	case len(name) > MaxCarNameChars*utf8.UTFMax, utf8.RuneCountInString(name) > MaxCarNameChars:
		return 0, &ValidationError{Field: "name", Message: fmt.Sprintf("must be at most %d characters", MaxCarNameChars)}
	case !utf8.ValidString(name) || strings.ContainsRune(name, 0):
		return 0, &ValidationError{Field: "name", Message: "must be text (UTF-8 without NUL characters)"}
	}
	var db interface {
		QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	} = s.pool
	if tx != nil {
		db = tx
	}
	var id int64
	if err := db.QueryRow(ctx, insertCarSQL, name).Scan(&id); err != nil {
		return 0, fmt.Errorf("reporting: creating a car: %w", err)
	}
	return id, nil
}

func unknownCar(carID int64) *ValidationError {
	return &ValidationError{Field: "car_id", Message: fmt.Sprintf("no car has id %d", carID), Err: ErrUnknownCar}
}

// isForeignKey reports whether err is a foreign key violation of
// constraint ("": of any).
func isForeignKey(err error, constraint string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23503" && (constraint == "" || pgErr.ConstraintName == constraint)
}
