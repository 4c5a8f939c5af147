package outbox

import (
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

var (
	// ErrNilPool is returned by New when it is given no pool.
	ErrNilPool = errors.New("outbox: nil pool")

	// ErrNilClient is returned by New when it is given no River client.
	ErrNilClient = errors.New("outbox: nil River client")

	// ErrNilArgs is returned when a nil job args value is enqueued.
	ErrNilArgs = errors.New("outbox: nil job args")

	// ErrInvalidArgs is returned when job args cannot be encoded to JSON, or
	// their kind is empty.
	ErrInvalidArgs = errors.New("outbox: invalid job args")

	// ErrPayloadTooLarge is matched (errors.Is) by *PayloadTooLargeError.
	ErrPayloadTooLarge = errors.New("outbox: job args payload too large")

	// ErrInvalidQueue is returned for a queue name River would refuse.
	ErrInvalidQueue = errors.New("outbox: invalid queue name")

	// ErrInvalidOptions is returned by Enqueue (and Add) for insert options
	// River would refuse when the job is relayed: a priority outside 1–4,
	// max attempts below 1, metadata that is not a JSON object, a malformed
	// tag or a negative unique period.
	ErrInvalidOptions = errors.New("outbox: invalid insert options")

	// ErrUnknownQueue is returned for a queue that is not in Config.Queues
	// (or not one of the registry's, for jobs.NewOutbox).
	ErrUnknownQueue = errors.New("outbox: unknown queue")

	// ErrInvalidEvent is returned by Publish for a malformed topic or a nil
	// or unencodable payload.
	ErrInvalidEvent = errors.New("outbox: invalid event")

	// ErrUnknownTopic is returned by Publish for a topic that is not in
	// Config.Topics (or not one of the registry's, for jobs.NewOutbox).
	ErrUnknownTopic = errors.New("outbox: unknown topic")

	// ErrManagedTx is returned by Tx.Commit and Tx.Rollback: InTx owns the
	// transaction and ends it when the function returns.
	ErrManagedTx = errors.New("outbox: the transaction is managed by InTx; return from the function to commit, return an error to roll back")

	// ErrTxAborted is returned by InTx when an Enqueue failed inside the
	// function and the function returned nil anyway: the transaction is
	// rolled back rather than committed with a partial set of jobs. It wraps
	// the Enqueue error.
	ErrTxAborted = errors.New("outbox: transaction rolled back because an enqueue failed")

	// ErrSequencedDirect is returned by Enqueue for a job of a sequence
	// (jobs.Sequencer) when Config.DirectInsert is set: only the outbox
	// table and its relay keep a sequence's commit order. Enqueue such
	// jobs through an Outbox without DirectInsert.
	ErrSequencedDirect = errors.New("outbox: a job of a sequence must be enqueued through the outbox table, not DirectInsert")

	// ErrCommitInDoubt is matched by the error of InTx (and its variants)
	// when the COMMIT — alone, or pipelined with the job insert — was sent
	// and no answer came back: the deadline expired, the connection broke.
	// The transaction may have committed or not; the error wraps the cause.
	// Don't retry blindly: a retry may write the business rows twice. Check
	// the source of truth (the row the transaction wrote, by a key the caller
	// chose) and retry only if it is absent. Every other InTx error means
	// nothing was committed.
	ErrCommitInDoubt = errors.New("outbox: commit in doubt: the transaction may have committed; check before retrying")
)

// commitError wraps err, an error met after a COMMIT was sent (alone or at
// the end of a pipelined batch), as ErrCommitInDoubt unless the outcome is
// known: an error the server answered (a deferred constraint, a
// serialization failure at COMMIT, or an error in a statement before it,
// which makes the server skip the COMMIT) rolled the transaction back, and
// an error pgx reports as safe to retry means nothing was sent. A FATAL (or
// PANIC) answer to the COMMIT itself stays in doubt: a backend terminated
// while it waits for a synchronous standby has already committed locally.
func commitError(err error, duringCommit bool) error {
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr):
		if duringCommit && (pgErr.Severity == "FATAL" || pgErr.Severity == "PANIC") {
			return fmt.Errorf("%w: %w", ErrCommitInDoubt, err)
		}
		return err
	case errors.Is(err, pgx.ErrTxCommitRollback), pgconn.SafeToRetry(err):
		return err
	default:
		return fmt.Errorf("%w: %w", ErrCommitInDoubt, err)
	}
}

// PayloadTooLargeError is returned when the JSON encoding of job args is
// larger than Config.MaxPayloadBytes. It matches ErrPayloadTooLarge.
type PayloadTooLargeError struct {
	// Kind is the job kind whose args were refused.
	Kind string
	// Size is the size of the encoded args in bytes.
	Size int
	// Limit is the configured maximum in bytes.
	Limit int
}

// Error implements error.
func (e *PayloadTooLargeError) Error() string {
	return fmt.Sprintf("outbox: args of job kind %q are %d bytes, over the %d-byte limit: store the data in a table and put its ID in the args", e.Kind, e.Size, e.Limit)
}

// Is makes errors.Is(err, ErrPayloadTooLarge) true.
func (e *PayloadTooLargeError) Is(target error) bool { return target == ErrPayloadTooLarge }
