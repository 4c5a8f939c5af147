package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
)

// Sequence places a job in a sequence: the jobs of one (Namespace, Key) run
// one at a time, in the order their transactions committed. The relay
// inserts a sequenced row's job pending and notes it in
// job_sequence_inbox; AppendSequences places it in its sequence once every
// older outbox row has been moved (migrations/0022_job_sequences.up.sql
// says how that order is made and kept).
type Sequence struct {
	// Namespace and Key name the sequence; each is 1 to SequenceNameMax
	// bytes.
	Namespace, Key string
	// Width is how many of the sequence's jobs may run at once, 1 to
	// SequenceWidthMax; 0 means 1. Wider than 1, the jobs start in commit
	// order and finish in any order: a fair share (jobs.FairShare).
	Width int
	// Stripes, above 1, spreads the key's jobs over that many sequences,
	// "Key#0" to "Key#<Stripes-1>", by outbox id: each advances on its
	// own, so the completions of one busy key do not all wait for one
	// sequence's row (jobs.FairShare). 0 or 1: one sequence.
	Stripes int
	// Continue releases a job's place when it fails an attempt (the next
	// member starts; the failed one retries on its own). False holds the
	// place until the job completes or is discarded or cancelled.
	Continue bool
}

// SequenceWidthMax is the widest Sequence.Width.
const SequenceWidthMax = 10_000

// SequenceNameMax is the longest Sequence.Namespace or Key, in bytes.
const SequenceNameMax = 255

// MetadataKeySequence is the key of a sequenced job's metadata that names
// its sequence: {"ns": …, "key": …, "continue": …, "outbox_id": …}. The
// trigger that advances sequences reads it.
const MetadataKeySequence = "aftercommit_seq"

// seqMeta is the value of MetadataKeySequence.
type seqMeta struct {
	Namespace string `json:"ns"`
	Key       string `json:"key"`
	Width     int    `json:"width"`
	Continue  bool   `json:"continue"`
	OutboxID  int64  `json:"outbox_id"`
}

// seqParams is one sequenced row of a batch.
type seqParams struct {
	seq    Sequence
	params river.InsertManyParams
	id     int64 // the outbox row's
}

func (s Sequence) check() error {
	switch {
	case s.Namespace == "" || len(s.Namespace) > SequenceNameMax:
		return fmt.Errorf("sequence namespace must be 1 to %d bytes, got %d", SequenceNameMax, len(s.Namespace))
	case s.Key == "" || len(s.Key) > SequenceNameMax:
		return fmt.Errorf("sequence key must be 1 to %d bytes, got %d", SequenceNameMax, len(s.Key))
	case s.Width < 0 || s.Width > SequenceWidthMax:
		return fmt.Errorf("sequence width must be 1 to %d, got %d", SequenceWidthMax, s.Width)
	case s.Stripes < 0 || s.Stripes > SequenceWidthMax:
		return fmt.Errorf("sequence stripes must be 1 to %d, got %d", SequenceWidthMax, s.Stripes)
	}
	return nil
}

type seqStatements struct {
	note, appendSQL string
}

func newSeqStatements(schema string) seqStatements {
	q := func(name string) string {
		if schema == "" {
			return name
		}
		return pgx.Identifier{schema, name}.Sanitize()
	}
	return seqStatements{
		note: `INSERT INTO ` + q("job_sequence_inbox") + ` (outbox_id, namespace, seq_key, width, job_id)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::int[], $5::bigint[])`,
		appendSQL: `SELECT ` + q("job_sequence_append") + `($1)`,
	}
}

// pend makes a sequenced row's job pending, with its sequence in its
// metadata: job_sequence_append places it and makes it available at its
// turn.
func pend(s *seqParams) error {
	opts := *s.params.InsertOpts
	meta, err := withSeqMeta(opts.Metadata, seqMeta{Namespace: s.seq.Namespace, Key: s.seq.Key, Width: max(1, s.seq.Width),
		Continue: s.seq.Continue, OutboxID: s.id})
	if err != nil {
		return err
	}
	opts.Metadata = meta
	opts.Pending = true
	s.params.InsertOpts = &opts
	return nil
}

// withSeqMeta returns metadata (a JSON object, or empty) with m under
// MetadataKeySequence.
func withSeqMeta(metadata []byte, m seqMeta) ([]byte, error) {
	obj := map[string]json.RawMessage{}
	if len(metadata) > 0 {
		if err := json.Unmarshal(metadata, &obj); err != nil {
			return nil, fmt.Errorf("metadata must be a JSON object: %w", err)
		}
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	obj[MetadataKeySequence] = raw
	return json.Marshal(obj)
}

// note writes the sequenced jobs inserted to job_sequence_inbox, in the
// batch's transaction.
func (r *Relay) note(ctx context.Context, tx pgx.Tx, jobs []seqJob) error {
	if len(jobs) == 0 {
		return nil
	}
	n := len(jobs)
	oids, nss, keys, widths, ids := make([]int64, n), make([]string, n), make([]string, n), make([]int32, n), make([]int64, n)
	for i, j := range jobs {
		oids[i], nss[i], keys[i], widths[i], ids[i] = j.meta.OutboxID, j.meta.Namespace, j.meta.Key, int32(max(1, j.meta.Width)), j.jobID //nolint:gosec // checked ≤ SequenceWidthMax
	}
	if _, err := tx.Exec(ctx, r.seqSQL.note, oids, nss, keys, widths, ids); err != nil {
		return classify(tx, fmt.Errorf("relay: noting %d sequenced jobs: %w", n, err))
	}
	return nil
}

// appendLimit is the most jobs one job_sequence_append call places.
const appendLimit = 10_000

// AppendSequences places the sequenced jobs relays inserted in their
// sequences (job_sequence_append), as far as every older outbox row has
// been moved, and returns how many it placed. The relay calls it after
// each batch and on each poll; tests and tools may call it after Drain.
func (r *Relay) AppendSequences(ctx context.Context) (int, error) {
	total := 0
	for {
		var n int
		if err := r.pool.QueryRow(ctx, r.seqSQL.appendSQL, appendLimit).Scan(&n); err != nil {
			return total, fmt.Errorf("relay: placing sequenced jobs: %w", err)
		}
		total += n
		if n < appendLimit {
			return total, nil
		}
	}
}

var errSeqUnnamed = errors.New("sequence without a name")

// seqJob is a sequenced job River inserted.
type seqJob struct {
	jobID int64
	meta  seqMeta
}

// seqJobOf returns the sequence place of an inserted job, from its
// metadata.
func seqJobOf(jobID int64, metadata []byte) (seqJob, bool, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(metadata, &m); err != nil {
		return seqJob{}, false, fmt.Errorf("relay: job %d: reading its metadata: %w", jobID, err)
	}
	raw, ok := m[MetadataKeySequence]
	if !ok {
		return seqJob{}, false, nil
	}
	var meta seqMeta
	if err := json.Unmarshal(raw, &meta); err != nil {
		return seqJob{}, false, fmt.Errorf("relay: job %d: reading its sequence: %w", jobID, err)
	}
	if meta.Namespace == "" || meta.Key == "" {
		return seqJob{}, false, fmt.Errorf("relay: job %d: %w", jobID, errSeqUnnamed)
	}
	return seqJob{jobID: jobID, meta: meta}, true, nil
}
