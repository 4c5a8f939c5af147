package outbox

import (
	"errors"
	"fmt"
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

	// ErrUnknownQueue is returned for a queue that is not in Config.Queues.
	ErrUnknownQueue = errors.New("outbox: unknown queue")

	// ErrInvalidEvent is returned by Publish for a malformed topic or a nil
	// or unencodable payload.
	ErrInvalidEvent = errors.New("outbox: invalid event")

	// ErrUnknownTopic is returned by Publish for a topic that is not in
	// Config.Topics.
	ErrUnknownTopic = errors.New("outbox: unknown topic")

	// ErrManagedTx is returned by Tx.Commit and Tx.Rollback: InTx owns the
	// transaction and ends it when the function returns.
	ErrManagedTx = errors.New("outbox: the transaction is managed by InTx; return from the function to commit, return an error to roll back")

	// ErrTxAborted is returned by InTx when an Enqueue failed inside the
	// function and the function returned nil anyway: the transaction is
	// rolled back rather than committed with a partial set of jobs. It wraps
	// the Enqueue error.
	ErrTxAborted = errors.New("outbox: transaction rolled back because an enqueue failed")
)

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
