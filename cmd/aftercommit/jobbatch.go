package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// errNoSuchBatch is reported for a batch ID no batch has.
var errNoSuchBatch = errors.New("no such job batch")

// batchView is a job batch as jobs batch show prints it.
type batchView struct {
	ID            string            `json:"id"`
	State         string            `json:"state"`
	CreatedAt     time.Time         `json:"created_at"`
	Sealed        bool              `json:"sealed"`
	Expected      int               `json:"expected"`
	Unfinished    int               `json:"unfinished"`
	Completed     int               `json:"completed"`
	Discarded     int               `json:"discarded"`
	Cancelled     int               `json:"cancelled"`
	FinishedAt    *time.Time        `json:"finished_at"`
	CallbackJobID *int64            `json:"callback_job_id"`
	CallbackKind  *string           `json:"callback_kind"`
	CallbackState *string           `json:"callback_state"`
	Members       []batchMemberView `json:"members"`
}

type batchMemberView struct {
	JobID      int64           `json:"job_id"`
	Kind       string          `json:"kind"`
	State      string          `json:"state"`
	Output     json.RawMessage `json:"output,omitempty"`
	FinishedAt time.Time       `json:"finished_at"`
}

func jobsBatchShow(ctx context.Context, pool *pgxpool.Pool, id string, asJSON bool, e *env) error {
	var v batchView
	err := pool.QueryRow(ctx, `SELECT id::text, state, created_at, sealed, expected, unfinished, completed, discarded, cancelled,
			finished_at, callback_job_id, callback_kind, callback_state::text
		FROM job_batch_status WHERE id = $1::uuid`, id).Scan(&v.ID, &v.State, &v.CreatedAt, &v.Sealed, &v.Expected, &v.Unfinished,
		&v.Completed, &v.Discarded, &v.Cancelled, &v.FinishedAt, &v.CallbackJobID, &v.CallbackKind, &v.CallbackState)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("aftercommit jobs batch show %s: %w", id, errNoSuchBatch)
	}
	if err != nil {
		return fmt.Errorf("aftercommit jobs batch show %s: %w", id, err)
	}
	rows, err := pool.Query(ctx, `SELECT job_id, kind, state, output, finished_at FROM job_batch_members
		WHERE batch_id = $1::uuid ORDER BY finished_at, job_id`, id)
	if err != nil {
		return fmt.Errorf("aftercommit jobs batch show %s: %w", id, err)
	}
	v.Members, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (batchMemberView, error) {
		var m batchMemberView
		var out []byte
		err := row.Scan(&m.JobID, &m.Kind, &m.State, &out, &m.FinishedAt)
		if out != nil {
			m.Output = out
		}
		return m, err
	})
	if err != nil {
		return fmt.Errorf("aftercommit jobs batch show %s: %w", id, err)
	}
	if asJSON {
		return writeJSON(e.stdout, v)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s\t%s\n", k, v) }
	row("Batch", v.ID)
	row("State", v.State)
	row("Created", formatTime(v.CreatedAt))
	row("Sealed", strconv.FormatBool(v.Sealed))
	row("Members", fmt.Sprintf("%d expected, %d unfinished, %d completed, %d discarded, %d cancelled",
		v.Expected, v.Unfinished, v.Completed, v.Discarded, v.Cancelled))
	row("Finished", formatTimePtr(v.FinishedAt))
	switch {
	case v.CallbackJobID != nil:
		row("Callback", fmt.Sprintf("job %d (%s), %s", *v.CallbackJobID, orElse(v.CallbackKind, "deleted"), orElse(v.CallbackState, "deleted")))
	case v.FinishedAt != nil:
		row("Callback", "none (the batch has no callback for this outcome)")
	default:
		row("Callback", "not yet")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(v.Members) == 0 {
		return nil
	}
	fmt.Fprintln(e.stdout, "Finished members:")
	tw = tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  JOB\tKIND\tSTATE\tFINISHED\tOUTPUT")
	for _, m := range v.Members {
		out := string(m.Output)
		if out == "" {
			out = "-"
		}
		fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%s\n", m.JobID, m.Kind, m.State, formatTime(m.FinishedAt), oneLine(out))
	}
	return tw.Flush()
}

// orElse returns *s, or none when s is nil.
func orElse(s *string, none string) string {
	if s == nil {
		return none
	}
	return *s
}
