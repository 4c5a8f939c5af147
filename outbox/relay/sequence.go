package relay

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/internal/riverseam"
)

// Sequence places a job in a sequence: the jobs of one (Namespace, Key) run
// one at a time, in the order their transactions committed (see
// migrations/0022_job_sequences.up.sql for how that order is made and
// kept).
type Sequence struct {
	// Namespace and Key name the sequence; each is 1 to SequenceNameMax
	// bytes.
	Namespace, Key string
	// Continue releases the sequence when its head fails an attempt (the
	// next member starts; the failed one retries on its own). False holds
	// the sequence until the head completes or is discarded or cancelled.
	Continue bool
}

// SequenceNameMax is the longest Sequence.Namespace or Key, in bytes.
const SequenceNameMax = 255

// MetadataKeySequence is the key of a sequenced job's metadata that says
// where it stands: {"ns": …, "key": …, "pos": …, "continue": …}. The
// trigger that advances sequences reads it.
const MetadataKeySequence = "aftercommit_seq"

// seqMeta is the value of MetadataKeySequence.
type seqMeta struct {
	Namespace string `json:"ns"`
	Key       string `json:"key"`
	Pos       int64  `json:"pos"`
	Continue  bool   `json:"continue"`
}

type seqID struct{ ns, key string }

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
	}
	return nil
}

type seqStatements struct {
	waitOlder, claim, members, promote, release string
}

func newSeqStatements(schema string) seqStatements {
	q := func(name string) string {
		if schema == "" {
			return name
		}
		return pgx.Identifier{schema, name}.Sanitize()
	}
	table, seqs, members, jobs := q("outbox_jobs"), q("job_sequences"), q("job_sequence_members"), q("river_job")
	return seqStatements{
		// Every older row another relay holds: wait until it moved them
		// (its rows are gone then) or let them go. Rows this transaction
		// took are deleted already, so invisible here.
		waitOlder: `SELECT count(*) FROM (SELECT id FROM ` + table + ` WHERE id < $1 FOR KEY SHARE) AS older`,
		// Appends $3 members to each sequence, in key order (so two
		// relays wait for each other instead of deadlocking), and takes
		// the head for the first of them when the sequence has none.
		// Returns the new next position and the head.
		claim: `INSERT INTO ` + seqs + ` AS s (namespace, seq_key, next_pos, head_pos, head_since)
SELECT ns, k, n, 0, now() FROM unnest($1::text[], $2::text[], $3::bigint[]) AS c (ns, k, n)
ON CONFLICT (namespace, seq_key) DO UPDATE
   SET next_pos = s.next_pos + EXCLUDED.next_pos,
       head_pos = coalesce(s.head_pos, s.next_pos),
       head_since = CASE WHEN s.head_pos IS NULL THEN now() ELSE s.head_since END
RETURNING s.namespace, s.seq_key, s.next_pos, s.head_pos`,
		members: `INSERT INTO ` + members + ` (namespace, seq_key, pos, job_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[])`,
		// Makes a member the head after the one claimed was refused
		// (careful mode only).
		promote: `WITH j AS (
    UPDATE ` + jobs + ` SET state = CASE WHEN scheduled_at > now() THEN 'scheduled' ELSE 'available' END::river_job_state
     WHERE id = $4 AND state = 'pending'
    RETURNING queue, state)
UPDATE ` + seqs + ` SET head_pos = $3, head_since = now() WHERE namespace = $1 AND seq_key = $2
RETURNING (SELECT queue FROM j WHERE state = 'available')`,
		// No member of this batch made it: the sequence has no head, or
		// no row at all when it has no member.
		release: `WITH s AS (
    UPDATE ` + seqs + ` SET head_pos = NULL, head_since = NULL WHERE namespace = $1 AND seq_key = $2 AND head_pos = $3 RETURNING 1)
DELETE FROM ` + seqs + ` WHERE namespace = $1 AND seq_key = $2 AND EXISTS (SELECT FROM s)
   AND NOT EXISTS (SELECT FROM ` + members + ` WHERE namespace = $1 AND seq_key = $2)`,
	}
}

// claim is what the claim statement returned for one sequence.
type claim struct {
	start int64 // the batch's first member's position
	head  bool  // the first member is the head
}

// sequence appends the batch's sequenced rows to their sequences: it waits
// for older rows other relays hold, claims positions, marks every member
// but a new head pending and puts its position in its metadata. The
// params are then inserted like any others; recordMembers finishes.
func (r *Relay) sequence(ctx context.Context, tx pgx.Tx, seqs []seqParams) (map[seqID]claim, error) {
	maxID := slices.MaxFunc(seqs, func(a, b seqParams) int { return cmp.Compare(a.id, b.id) }).id
	if _, err := tx.Exec(ctx, r.seqSQL.waitOlder, maxID); err != nil {
		return nil, fmt.Errorf("relay: waiting for older outbox rows: %w", err)
	}
	counts := map[seqID]int64{}
	for _, s := range seqs {
		counts[seqID{s.seq.Namespace, s.seq.Key}]++
	}
	ids := make([]seqID, 0, len(counts))
	for id := range counts {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b seqID) int { return cmp.Or(cmp.Compare(a.ns, b.ns), cmp.Compare(a.key, b.key)) })
	nss, keys, ns := make([]string, len(ids)), make([]string, len(ids)), make([]int64, len(ids))
	for i, id := range ids {
		nss[i], keys[i], ns[i] = id.ns, id.key, counts[id]
	}
	rows, err := tx.Query(ctx, r.seqSQL.claim, nss, keys, ns)
	if err != nil {
		return nil, fmt.Errorf("relay: claiming sequence positions: %w", err)
	}
	defer rows.Close()
	claims := make(map[seqID]claim, len(ids))
	for rows.Next() {
		var (
			id   seqID
			next int64
			head *int64
		)
		if err := rows.Scan(&id.ns, &id.key, &next, &head); err != nil {
			return nil, fmt.Errorf("relay: claiming sequence positions: %w", err)
		}
		start := next - counts[id]
		claims[id] = claim{start: start, head: head != nil && *head == start}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("relay: claiming sequence positions: %w", err)
	}
	next := make(map[seqID]int64, len(claims))
	for i := range seqs {
		s := &seqs[i]
		id := seqID{s.seq.Namespace, s.seq.Key}
		c, ok := claims[id]
		if !ok {
			return nil, fmt.Errorf("relay: no position claimed for sequence %q/%q", id.ns, id.key)
		}
		pos := c.start + next[id]
		next[id]++
		opts := *s.params.InsertOpts
		meta, err := withSeqMeta(opts.Metadata, seqMeta{Namespace: id.ns, Key: id.key, Pos: pos, Continue: s.seq.Continue})
		if err != nil {
			return nil, err
		}
		opts.Metadata = meta
		opts.Pending = !(c.head && pos == c.start)
		s.params.InsertOpts = &opts
	}
	return claims, nil
}

// withSeqMeta returns metadata (a JSON object, or empty) with m under
// MetadataKeySequence.
func withSeqMeta(metadata []byte, m seqMeta) ([]byte, error) {
	obj := map[string]json.RawMessage{}
	if len(metadata) > 0 {
		if err := json.Unmarshal(metadata, &obj); err != nil {
			return nil, &rowError{err: fmt.Errorf("metadata must be a JSON object: %w", err)}
		}
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	obj[MetadataKeySequence] = raw
	return json.Marshal(obj)
}

// recordMembers writes the member rows of the sequenced jobs inserted
// (results: River's rows, whose metadata says their place). In careful
// mode some members may be missing: a claimed head that was refused hands
// the head to the sequence's next member of the batch, or leaves the
// sequence without a head.
func (r *Relay) recordMembers(ctx context.Context, tx pgx.Tx, claims map[seqID]claim, jobs []seqJob) error {
	if len(claims) == 0 {
		return nil
	}
	n := len(jobs)
	nss, keys, poss, ids := make([]string, n), make([]string, n), make([]int64, n), make([]int64, n)
	first := map[seqID]seqJob{}
	for i, j := range jobs {
		nss[i], keys[i], poss[i], ids[i] = j.meta.Namespace, j.meta.Key, j.meta.Pos, j.jobID
		id := seqID{j.meta.Namespace, j.meta.Key}
		if f, ok := first[id]; !ok || j.meta.Pos < f.meta.Pos {
			first[id] = j
		}
	}
	if n > 0 {
		if _, err := tx.Exec(ctx, r.seqSQL.members, nss, keys, poss, ids); err != nil {
			return classify(tx, fmt.Errorf("relay: recording %d sequence members: %w", n, err))
		}
	}
	for id, c := range claims {
		if !c.head {
			continue
		}
		f, ok := first[id]
		switch {
		case ok && f.meta.Pos == c.start:
			// The head claimed was inserted: the usual case.
		case ok:
			var queue *string
			if err := tx.QueryRow(ctx, r.seqSQL.promote, id.ns, id.key, f.meta.Pos, f.jobID).Scan(&queue); err != nil {
				return fmt.Errorf("relay: handing sequence %q/%q its head: %w", id.ns, id.key, err)
			}
			if queue != nil {
				if _, err := tx.Exec(ctx, riverseam.WakeSQL, r.cfg.Schema, *queue); err != nil {
					return fmt.Errorf("relay: waking queue %q: %w", *queue, err)
				}
			}
		default:
			if _, err := tx.Exec(ctx, r.seqSQL.release, id.ns, id.key, c.start); err != nil {
				return fmt.Errorf("relay: releasing sequence %q/%q: %w", id.ns, id.key, err)
			}
		}
	}
	return nil
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
