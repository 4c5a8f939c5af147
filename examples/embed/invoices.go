package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
)

// sendInvoiceArgs asks for one invoice to be sent. Args are IDs: the worker
// reads the invoice itself.
type sendInvoiceArgs struct {
	InvoiceID int64 `json:"invoice_id"`
}

func (sendInvoiceArgs) Kind() string { return "billing.send_invoice" }

// sendInvoiceWorker sends an invoice: here it only records when.
type sendInvoiceWorker struct {
	river.WorkerDefaults[sendInvoiceArgs]

	pool *pgxpool.Pool
}

// Work marks the invoice sent and completes the job in one transaction, so
// a retry or a second delivery never sends it twice.
func (w *sendInvoiceWorker) Work(ctx context.Context, job *river.Job[sendInvoiceArgs]) error {
	return pgx.BeginFunc(ctx, w.pool, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE invoices SET sent_at = now() WHERE id = $1 AND sent_at IS NULL`, job.Args.InvoiceID)
		if err != nil {
			return err
		}
		return jobs.CompleteTx(ctx, tx, job, nil)
	})
}

func (a *app) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /invoices", a.createInvoice)
	mux.HandleFunc("GET /invoices/{id}", a.showInvoice)
	return mux
}

// createInvoice writes the invoice and the job that sends it in one
// transaction: both exist after the COMMIT, neither after a rollback.
func (a *app) createInvoice(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Customer    string `json:"customer"`
		AmountCents int64  `json:"amount_cents"`
	}
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
		http.Error(w, "want JSON: {\"customer\": …, \"amount_cents\": …}", http.StatusBadRequest)
		return
	}
	var id int64
	_, err := a.ob.InTx(r.Context(), nil, func(ctx context.Context, tx *outbox.Tx) error {
		err := tx.QueryRow(ctx, `INSERT INTO invoices (customer, amount_cents) VALUES ($1, $2) RETURNING id`,
			in.Customer, in.AmountCents).Scan(&id)
		if err != nil {
			return err // rolls back: no invoice, no job
		}
		return tx.Enqueue(sendInvoiceArgs{InvoiceID: id}, nil) // inserted with the COMMIT
	})
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr) && pgErr.Code == "23514": // check_violation
		http.Error(w, "amount_cents must be positive", http.StatusUnprocessableEntity)
		return
	case errors.Is(err, outbox.ErrCommitInDoubt):
		// The COMMIT went out and no answer came back: the invoice and its
		// job may exist. Never answer "failed" to a client that would retry.
		http.Error(w, "the invoice may have been created: check before retrying", http.StatusServiceUnavailable)
		return
	case err != nil:
		a.logger.ErrorContext(r.Context(), "embed: creating an invoice", "err", err)
		http.Error(w, "could not create the invoice", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Location", "/invoices/"+strconv.FormatInt(id, 10))
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(map[string]int64{"id": id})
}

func (a *app) showInvoice(w http.ResponseWriter, r *http.Request) {
	var inv struct {
		ID          int64  `json:"id"`
		Customer    string `json:"customer"`
		AmountCents int64  `json:"amount_cents"`
		Sent        bool   `json:"sent"`
	}
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err == nil {
		err = a.pool.QueryRow(r.Context(), `SELECT id, customer, amount_cents, sent_at IS NOT NULL FROM invoices WHERE id = $1`,
			id).Scan(&inv.ID, &inv.Customer, &inv.AmountCents, &inv.Sent)
	}
	switch {
	case errors.Is(err, strconv.ErrSyntax), errors.Is(err, strconv.ErrRange), errors.Is(err, pgx.ErrNoRows):
		http.NotFound(w, r)
		return
	case err != nil:
		a.logger.ErrorContext(r.Context(), "embed: reading an invoice", "err", err)
		http.Error(w, "could not read the invoice", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(inv)
}
