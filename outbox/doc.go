// Package outbox is aftercommit's transactional enqueue API: business rows
// and the jobs that follow them up are written in the same Postgres
// transaction, so a job can neither be lost after a commit nor run for a
// write that was rolled back. It replaces after_commit callbacks.
//
// # Transactions
//
// Outbox.InTx runs a function in a transaction and hands it a *Tx, which is a
// pgx.Tx for the caller's own SQL plus Enqueue for jobs:
//
//	_, err := ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
//		var id int64
//		if err := tx.QueryRow(ctx, `INSERT INTO donations ... RETURNING id`).Scan(&id); err != nil {
//			return err
//		}
//		return tx.Enqueue(UpdateEmailDonationArgs{DonationID: id}, nil)
//	})
//
// The function's return value decides: nil commits, an error rolls back, a
// panic rolls back and is raised again. An Enqueue error that the function
// ignores still rolls the transaction back (ErrTxAborted): a transaction never
// commits a partial set of its jobs.
//
// # When the answer to COMMIT is lost
//
// If the deadline expires or the connection breaks after the COMMIT was sent
// (alone, or pipelined with the job insert), nobody can tell from the client
// whether the transaction committed: InTx returns an error matching
// ErrCommitInDoubt, wrapping the cause. Retrying blindly may write the
// business rows twice. Look for the transaction's effect in the source of
// truth — a row with a key the caller chose (an idempotency key, an order
// number) — and retry only if it is absent. Every other error of InTx means
// the transaction rolled back, with its jobs: retrying it is safe.
//
// # One round trip, de-duplicated
//
// Enqueue writes nothing. When the function returns, the buffered jobs are
// inserted with River's own insert statement (one statement for all of them),
// sent to the server in the same round trip as the COMMIT. A transaction that
// enqueues costs about what one that does not costs.
//
// Jobs of the same kind with the same de-duplication key are written once:
// args implementing Deduper choose the key, other args are keyed by their JSON
// encoding. A loop that enqueues 10,000 jobs over 100 distinct keys writes 100
// rows with one INSERT.
//
// # Transactions the caller owns
//
// When the transaction comes from elsewhere (a framework, a River worker),
// Outbox.Enqueue or a Batch (Add, then Flush(ctx, tx)) apply the same
// validation and de-duplication and insert with one round trip; the caller
// commits.
//
// # Bad input
//
// Args are meant to be a few IDs: the worker reads the source of truth.
// Enqueue refuses args whose JSON is larger than Config.MaxPayloadBytes (128
// KiB by default) with a *PayloadTooLargeError naming the kind and the size,
// args that do not encode (ErrInvalidArgs), nil args (ErrNilArgs), malformed
// queue names (ErrInvalidQueue) and, when Config.Queues is set, queues not in
// it (ErrUnknownQueue). Errors are wrapped with %w; nothing panics on user
// input.
package outbox
