package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
)

// The handler commits an invoice and its job together; the worker in the
// same process sends the invoice once; a rolled-back invoice leaves no job.
func TestEmbed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, nil)

	a, err := newApp(ctx, s.Pool, s.Name, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	require.NoError(t, a.start(ctx))
	t.Cleanup(func() { require.NoError(t, a.stop(context.WithoutCancel(ctx))) })
	srv := httptest.NewServer(a.routes())
	t.Cleanup(srv.Close)

	resp, body := request(t, http.MethodPost, srv.URL+"/invoices", `{"customer": "Ada", "amount_cents": 1200}`)
	require.Equal(t, http.StatusCreated, resp.StatusCode, body)
	var created struct{ ID int64 }
	require.NoError(t, json.Unmarshal([]byte(body), &created))
	id := strconv.FormatInt(created.ID, 10)
	require.Equal(t, "/invoices/"+id, resp.Header.Get("Location"))
	require.Equal(t, "application/json", resp.Header.Get("Content-Type"))

	type jobRow struct {
		Kind, Queue, State, Args string
		Priority, Attempt        int
	}
	var job jobRow
	require.Eventually(t, func() bool {
		err := s.Pool.QueryRow(ctx, `
			SELECT kind, queue, state::text, args::text, priority, attempt FROM river_job WHERE kind = 'billing.send_invoice'`).
			Scan(&job.Kind, &job.Queue, &job.State, &job.Args, &job.Priority, &job.Attempt)
		return err == nil && job.State == "completed"
	}, 30*time.Second, 10*time.Millisecond, "the send_invoice job did not complete")
	require.Equal(t, jobRow{Kind: "billing.send_invoice", Queue: "billing_default", State: "completed",
		Args: `{"invoice_id": ` + id + `}`, Priority: 1, Attempt: 1}, job)

	var (
		customer    string
		amountCents int64
		sent        bool
	)
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT customer, amount_cents, sent_at IS NOT NULL FROM invoices WHERE id = $1`, created.ID).
		Scan(&customer, &amountCents, &sent))
	require.Equal(t, "Ada", customer)
	require.Equal(t, int64(1200), amountCents)
	require.True(t, sent)

	resp, body = request(t, http.MethodGet, srv.URL+"/invoices/"+id, "")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, `{"id":`+id+`,"customer":"Ada","amount_cents":1200,"sent":true}`+"\n", body)

	// A rolled-back transaction leaves neither an invoice nor a job.
	resp, body = request(t, http.MethodPost, srv.URL+"/invoices", `{"customer": "Bob", "amount_cents": 0}`)
	require.Equal(t, http.StatusUnprocessableEntity, resp.StatusCode)
	require.Equal(t, "amount_cents must be positive\n", body)
	var invoices, sendJobs int
	require.NoError(t, s.Pool.QueryRow(ctx, `
		SELECT (SELECT count(*) FROM invoices), (SELECT count(*) FROM river_job WHERE kind = 'billing.send_invoice')`).
		Scan(&invoices, &sendJobs))
	require.Equal(t, 1, invoices)
	require.Equal(t, 1, sendJobs)

	// The same client works aftercommit's kinds: the events pruner, which
	// the leader enqueues at start.
	require.Eventually(t, func() bool {
		var n int
		err := s.Pool.QueryRow(ctx,
			`SELECT count(*) FROM river_job WHERE kind = 'aftercommit.prune_events' AND state = 'completed'`).Scan(&n)
		return err == nil && n == 1
	}, 30*time.Second, 10*time.Millisecond, "the events pruner did not run")
}

// response is what request keeps of an *http.Response: not its body, which
// request reads and closes.
type response struct {
	StatusCode int
	Header     http.Header
}

func request(t *testing.T, method, url, body string) (response, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, strings.NewReader(body))
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer func() { _ = resp.Body.Close() }() // read to the end below: a close error loses nothing
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return response{StatusCode: resp.StatusCode, Header: resp.Header}, string(b)
}
