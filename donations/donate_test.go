package donations_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/donations"
	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/jobstest"
	"github.com/aftercommit/aftercommit/internal/testtrace"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
)

// The helpers of the Donate and email-flag tests are methods of
// donateBundle, so that they never collide with the helpers of the package's
// other test files.

// donateBundle is a schema with the donations domain registered, a River
// client built from that registry and a Service.
type donateBundle struct {
	schema *dbtest.Schema
	client *river.Client[pgx.Tx]
	ob     *outbox.Outbox
	svc    *donations.Service
	// events receives the client's job events; nil unless the client works.
	events <-chan *river.Event
	// trace records every statement the Service sends; nil unless asked.
	trace *testtrace.Tracer
}

// donateSetupOpts are the options of setupDonate.
type donateSetupOpts struct {
	// work starts the client on every queue; otherwise it only inserts.
	work bool
	// trace gives the Service a pool of its own whose statements are
	// recorded in donateBundle.trace.
	trace bool
	// middleware is appended to the client's (innermost).
	middleware []rivertype.Middleware
}

func setupDonate(ctx context.Context, t testing.TB, opts *donateSetupOpts) *donateBundle {
	t.Helper()
	if opts == nil {
		opts = &donateSetupOpts{}
	}
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 8})
	b := &donateBundle{schema: s}

	reg := jobs.NewRegistry()
	donations.Register(reg, s.Pool)
	b.client, b.events = jobstest.Client(ctx, t, s, reg, jobstest.Opts{
		Work:       opts.work,
		MaxWorkers: 4,
		River: &river.Config{
			FetchCooldown:     10 * time.Millisecond,
			FetchPollInterval: 50 * time.Millisecond,
			Middleware:        opts.middleware,
		},
	})

	pool := s.Pool
	if opts.trace {
		b.trace = &testtrace.Tracer{}
		pcfg, err := pgxpool.ParseConfig(s.URL)
		require.NoError(t, err)
		pcfg.MaxConns = 2
		pcfg.ConnConfig.Tracer = b.trace
		pool, err = pgxpool.NewWithConfig(ctx, pcfg)
		require.NoError(t, err)
		t.Cleanup(pool.Close)
	}
	ob, err := jobs.NewOutbox(pool, b.client, reg, directInsert)
	require.NoError(t, err)
	b.ob = ob
	b.svc = donations.NewService(pool, ob)
	return b
}

// fundraiser inserts a fundraiser.
func (b *donateBundle) fundraiser(ctx context.Context, t testing.TB, name string) int64 {
	t.Helper()
	var id int64
	require.NoError(t, b.schema.Pool.QueryRow(ctx,
		`INSERT INTO fundraisers (name) VALUES ($1) RETURNING id`, name).Scan(&id))
	return id
}

// user inserts a user.
func (b *donateBundle) user(ctx context.Context, t testing.TB, name, email string) int64 {
	t.Helper()
	var id int64
	require.NoError(t, b.schema.Pool.QueryRow(ctx,
		`INSERT INTO users (name, email) VALUES ($1, $2) RETURNING id`, name, email).Scan(&id))
	return id
}

// email inserts an email sent to userID for fundraiserID at sentAt.
func (b *donateBundle) email(ctx context.Context, t testing.TB, userID, fundraiserID int64, sentAt time.Time) int64 {
	t.Helper()
	var id int64
	require.NoError(t, b.schema.Pool.QueryRow(ctx,
		`INSERT INTO emails (user_id, fundraiser_id, sent_at) VALUES ($1, $2, $3) RETURNING id`,
		userID, fundraiserID, sentAt).Scan(&id))
	return id
}

// count runs a SELECT count(*) … and returns the count.
func (b *donateBundle) count(ctx context.Context, t testing.TB, sql string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, b.schema.Pool.QueryRow(ctx, sql, args...).Scan(&n))
	return n
}

// requireNothingWritten checks that no donation, user, job or event exists.
func (b *donateBundle) requireNothingWritten(ctx context.Context, t testing.TB) {
	t.Helper()
	for _, table := range []string{"donations", "users", "river_job", "outbox_events"} {
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM `+table), "rows in %s", table)
	}
}

// input is a valid donation to fundraiserID from ada@example.com.
func input(fundraiserID int64) donations.DonateInput {
	return donations.DonateInput{
		FundraiserID: fundraiserID,
		DonorEmail:   "ada@example.com",
		DonorName:    "Ada Lovelace",
		AmountCents:  2500,
		Currency:     "USD",
		Note:         "for the analytical engine",
		Succeeded:    true,
	}
}

// eventPayloads returns the payloads of the donation.created events.
func (b *donateBundle) eventPayloads(ctx context.Context, t testing.TB) []map[string]any {
	t.Helper()
	rows, err := b.schema.Pool.Query(ctx,
		`SELECT payload FROM outbox_events WHERE topic = $1 ORDER BY id`, donations.TopicDonationCreated)
	require.NoError(t, err)
	raws, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
	require.NoError(t, err)
	out := make([]map[string]any, len(raws))
	for i, raw := range raws {
		require.NoError(t, json.Unmarshal(raw, &out[i]))
	}
	return out
}

func TestDonate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("RecordsTheDonationItsJobAndItsEventInOneCommit", func(t *testing.T) {
		t.Parallel()
		b := setupDonate(ctx, t, nil)
		fid := b.fundraiser(ctx, t, "Engines")

		before := time.Now()
		d, err := b.svc.Donate(ctx, input(fid))
		require.NoError(t, err)

		require.Positive(t, d.ID)
		require.Positive(t, d.UserID)
		require.WithinDuration(t, before, d.CreatedAt, time.Minute)
		require.Equal(t, donations.Donation{
			ID: d.ID, UserID: d.UserID, FundraiserID: fid, EmailID: 0, DonorEmail: "ada@example.com",
			AmountCents: 2500, Currency: "USD", Status: donations.StatusSucceeded,
			Note: "for the analytical engine", CreatedAt: d.CreatedAt,
		}, d)

		var (
			userID                int64
			emailID               *int64
			status, currency, nte string
			amount                int64
		)
		require.NoError(t, b.schema.Pool.QueryRow(ctx,
			`SELECT user_id, email_id, status, currency, amount_cents, note FROM donations WHERE id = $1`, d.ID).
			Scan(&userID, &emailID, &status, &currency, &amount, &nte))
		require.Equal(t, d.UserID, userID)
		require.Nil(t, emailID)
		require.Equal(t, "succeeded", status)
		require.Equal(t, "USD", currency)
		require.Equal(t, int64(2500), amount)
		require.Equal(t, "for the analytical engine", nte)

		var name, email string
		require.NoError(t, b.schema.Pool.QueryRow(ctx, `SELECT name, email FROM users WHERE id = $1`, d.UserID).Scan(&name, &email))
		require.Equal(t, "Ada Lovelace", name)
		require.Equal(t, "ada@example.com", email)

		var args []byte
		var queue, state string
		require.NoError(t, b.schema.Pool.QueryRow(ctx,
			`SELECT args, queue, state::text FROM river_job WHERE kind = $1`, donations.UpdateEmailDonationKind).
			Scan(&args, &queue, &state))
		require.JSONEq(t, `{"donation_id": `+jsonInt(d.ID)+`}`, string(args))
		require.Equal(t, donations.QueueDefault, queue)
		require.Equal(t, "available", state)

		require.Equal(t, []map[string]any{{
			"donation_id": float64(d.ID), "fundraiser_id": float64(fid), "user_id": float64(d.UserID),
			"amount_cents": float64(2500), "currency": "USD", "status": "succeeded",
		}}, b.eventPayloads(ctx, t))
		var key string
		require.NoError(t, b.schema.Pool.QueryRow(ctx, `SELECT key FROM outbox_events WHERE topic = $1`, donations.TopicDonationCreated).Scan(&key))
		require.Equal(t, jsonInt(fid), key, "the event is keyed by its fundraiser")
	})

	t.Run("TakesThreeRoundTrips", func(t *testing.T) {
		t.Parallel()
		b := setupDonate(ctx, t, &donateSetupOpts{trace: true})
		fid := b.fundraiser(ctx, t, "Engines")

		for range 2 { // a new donor, then a returning one
			b.trace.Reset()
			_, err := b.svc.Donate(ctx, input(fid))
			require.NoError(t, err)

			var trips [][]string
			for _, trip := range b.trace.RoundTrips() {
				if len(trip) == 1 && testtrace.Matches(trip[0], "PGGetProductAndVersion") {
					continue // River asks a new connection for its server version once
				}
				trips = append(trips, trip)
			}
			require.Len(t, trips, 3, "BEGIN; the donation; events, jobs and COMMIT together")
			require.Equal(t, []string{"begin"}, trips[0])
			require.Len(t, trips[1], 1)
			require.True(t, testtrace.Matches(trips[1][0], "INSERT INTO users", "INSERT INTO donations"))
			require.True(t, testtrace.Matches(trips[2][0], "INSERT INTO outbox_events"))
			require.True(t, testtrace.Matches(trips[2][1], "JobInsertFastMany"))
			require.Equal(t, "COMMIT", trips[2][len(trips[2])-1])
		}
	})

	t.Run("FailedPaymentEnqueuesNoFlagJobButPublishes", func(t *testing.T) {
		t.Parallel()
		b := setupDonate(ctx, t, nil)
		fid := b.fundraiser(ctx, t, "Engines")

		in := input(fid)
		in.Succeeded = false
		d, err := b.svc.Donate(ctx, in)
		require.NoError(t, err)
		require.Equal(t, donations.StatusFailed, d.Status)

		require.Equal(t, "failed", func() string {
			var s string
			require.NoError(t, b.schema.Pool.QueryRow(ctx, `SELECT status FROM donations WHERE id = $1`, d.ID).Scan(&s))
			return s
		}())
		require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM river_job WHERE kind = $1`, donations.UpdateEmailDonationKind))
		events := b.eventPayloads(ctx, t)
		require.Len(t, events, 1)
		require.Equal(t, "failed", events[0]["status"])
		require.Equal(t, float64(d.ID), events[0]["donation_id"])
	})

	t.Run("FindsTheExistingUserWhateverTheCase", func(t *testing.T) {
		t.Parallel()
		b := setupDonate(ctx, t, nil)
		fid := b.fundraiser(ctx, t, "Engines")
		uid := b.user(ctx, t, "Countess", "Ada@Example.com")

		in := input(fid)
		in.DonorEmail = "  ada@EXAMPLE.COM "
		d, err := b.svc.Donate(ctx, in)
		require.NoError(t, err)
		require.Equal(t, uid, d.UserID)
		require.Equal(t, "ada@EXAMPLE.COM", d.DonorEmail)
		require.Equal(t, 1, b.count(ctx, t, `SELECT count(*) FROM users`))
		require.Equal(t, 1, b.count(ctx, t, `SELECT count(*) FROM users WHERE name = 'Countess' AND email = 'Ada@Example.com'`))
	})

	t.Run("NamesANewUserAfterTheAddress", func(t *testing.T) {
		t.Parallel()
		b := setupDonate(ctx, t, nil)
		fid := b.fundraiser(ctx, t, "Engines")

		in := input(fid)
		in.DonorName = ""
		in.DonorEmail = "grace.hopper@navy.example.org"
		d, err := b.svc.Donate(ctx, in)
		require.NoError(t, err)
		require.Equal(t, 1, b.count(ctx, t,
			`SELECT count(*) FROM users WHERE id = $1 AND name = 'grace.hopper' AND email = 'grace.hopper@navy.example.org'`, d.UserID))
	})

	t.Run("UpperCasesTheCurrency", func(t *testing.T) {
		t.Parallel()
		b := setupDonate(ctx, t, nil)
		fid := b.fundraiser(ctx, t, "Engines")

		in := input(fid)
		in.Currency = " eur"
		d, err := b.svc.Donate(ctx, in)
		require.NoError(t, err)
		require.Equal(t, "EUR", d.Currency)
		require.Equal(t, 1, b.count(ctx, t, `SELECT count(*) FROM donations WHERE currency = 'EUR'`))
	})

	t.Run("AnEmailIDThatNamesNoEmailIsStoredAsNone", func(t *testing.T) {
		t.Parallel()
		b := setupDonate(ctx, t, nil)
		fid := b.fundraiser(ctx, t, "Engines")

		in := input(fid)
		in.EmailID = 424242
		d, err := b.svc.Donate(ctx, in)
		require.NoError(t, err)
		require.Zero(t, d.EmailID)
		require.Equal(t, 1, b.count(ctx, t, `SELECT count(*) FROM donations WHERE id = $1 AND email_id IS NULL`, d.ID))
		require.Equal(t, 1, b.count(ctx, t, `SELECT count(*) FROM river_job WHERE kind = $1`, donations.UpdateEmailDonationKind))
	})

	t.Run("ConcurrentDonationsOfANewDonorShareOneUser", func(t *testing.T) {
		t.Parallel()
		b := setupDonate(ctx, t, nil)
		fid := b.fundraiser(ctx, t, "Engines")

		const n = 6
		var wg sync.WaitGroup
		userIDs := make([]int64, n)
		errs := make([]error, n)
		for i := range n {
			wg.Go(func() {
				in := input(fid)
				if i%2 == 1 {
					in.DonorEmail = "ADA@example.com"
				}
				d, err := b.svc.Donate(ctx, in)
				userIDs[i], errs[i] = d.UserID, err
			})
		}
		wg.Wait()
		require.NoError(t, errors.Join(errs...))
		require.Equal(t, 1, b.count(ctx, t, `SELECT count(*) FROM users`))
		for _, id := range userIDs {
			require.Equal(t, userIDs[0], id)
		}
		require.Equal(t, n, b.count(ctx, t, `SELECT count(*) FROM donations WHERE user_id = $1`, userIDs[0]))
	})

	t.Run("ADonorCreatedByAnotherTransactionMeanwhileIsFound", func(t *testing.T) {
		t.Parallel()
		b := setupDonate(ctx, t, nil)
		fid := b.fundraiser(ctx, t, "Engines")

		// Another transaction creates the donor's user and has not
		// committed when Donate's statement starts: Donate's ON CONFLICT
		// waits for it, does nothing, and its snapshot cannot see the row.
		other, err := b.schema.Pool.Begin(ctx)
		require.NoError(t, err)
		t.Cleanup(func() { _ = other.Rollback(context.WithoutCancel(ctx)) })
		var otherPID int32
		require.NoError(t, other.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&otherPID))
		var uid int64
		require.NoError(t, other.QueryRow(ctx,
			`INSERT INTO users (name, email) VALUES ('Ada', 'ADA@example.com') RETURNING id`).Scan(&uid))

		type result struct {
			d   donations.Donation
			err error
		}
		done := make(chan result, 1)
		go func() {
			d, err := b.svc.Donate(ctx, input(fid))
			done <- result{d, err}
		}()
		require.Eventually(t, func() bool {
			var waiting bool
			err := b.schema.Pool.QueryRow(ctx,
				`SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE $1::int = ANY (pg_blocking_pids(pid)))`, otherPID).Scan(&waiting)
			return err == nil && waiting
		}, 15*time.Second, 10*time.Millisecond, "Donate never waited for the other transaction")
		require.NoError(t, other.Commit(ctx))

		r := <-done
		require.NoError(t, r.err)
		require.Equal(t, uid, r.d.UserID)
		require.Equal(t, 1, b.count(ctx, t, `SELECT count(*) FROM donations WHERE id = $1 AND user_id = $2`, r.d.ID, uid))
		require.Equal(t, []map[string]any{{
			"donation_id": float64(r.d.ID), "fundraiser_id": float64(fid), "user_id": float64(uid),
			"amount_cents": float64(2500), "currency": "USD", "status": "succeeded",
		}}, b.eventPayloads(ctx, t))
	})

	t.Run("BadInputIsRefusedBeforeAnySQLAndWritesNothing", func(t *testing.T) {
		t.Parallel()
		b := setupDonate(ctx, t, &donateSetupOpts{trace: true})
		fid := b.fundraiser(ctx, t, "Engines")

		const currencies = "AUD, BRL, CAD, CHF, CZK, DKK, EUR, GBP, HKD, HUF, ILS, INR, JPY, MXN, NOK, NZD, PLN, SEK, SGD, USD, ZAR"
		tests := []struct {
			name   string
			modify func(in *donations.DonateInput)
			want   string
			field  string
		}{
			{"ZeroAmount", func(in *donations.DonateInput) { in.AmountCents = 0 },
				"donations: invalid amount_cents: must be more than zero, got 0", "amount_cents"},
			{"NegativeAmount", func(in *donations.DonateInput) { in.AmountCents = -500 },
				"donations: invalid amount_cents: must be more than zero, got -500", "amount_cents"},
			{"AmountOverTheMaximum", func(in *donations.DonateInput) { in.AmountCents = donations.MaxAmountCents + 1 },
				"donations: invalid amount_cents: must be at most 100000000, got 100000001", "amount_cents"},
			{"UnknownCurrency", func(in *donations.DonateInput) { in.Currency = "XYZ" },
				`donations: invalid currency: "XYZ" is not an accepted currency; accepted: ` + currencies, "currency"},
			{"HugeCurrencyIsNotEchoed", func(in *donations.DonateInput) { in.Currency = strings.Repeat("x", 1<<20) },
				`donations: invalid currency: "XXXXXXXXXXXXXXXX"… is not an accepted currency; accepted: ` + currencies, "currency"},
			{"NoCurrency", func(in *donations.DonateInput) { in.Currency = "" },
				"donations: invalid currency: is required; accepted: " + currencies, "currency"},
			{"NoEmail", func(in *donations.DonateInput) { in.DonorEmail = " " },
				"donations: invalid donor_email: is required", "donor_email"},
			{"NotAnEmail", func(in *donations.DonateInput) { in.DonorEmail = "ada-at-example.com" },
				"donations: invalid donor_email: must be an email address such as name@example.com", "donor_email"},
			{"EmailWithADisplayName", func(in *donations.DonateInput) { in.DonorEmail = "Ada <ada@example.com>" },
				"donations: invalid donor_email: must be an email address such as name@example.com", "donor_email"},
			{"EmailWithoutADotInTheDomain", func(in *donations.DonateInput) { in.DonorEmail = "ada@localhost" },
				"donations: invalid donor_email: must be an email address such as name@example.com", "donor_email"},
			{"EmailWithAnEmptyLabel", func(in *donations.DonateInput) { in.DonorEmail = "ada@example..com" },
				"donations: invalid donor_email: must be an email address such as name@example.com", "donor_email"},
			{"EmailWithADomainLiteral", func(in *donations.DonateInput) { in.DonorEmail = "ada@[192.168.0.1]" },
				"donations: invalid donor_email: must be an email address such as name@example.com", "donor_email"},
			{"EmailTooLong", func(in *donations.DonateInput) { in.DonorEmail = strings.Repeat("a", 250) + "@example.com" },
				"donations: invalid donor_email: must be at most 254 bytes, got 262", "donor_email"},
			{"NoteOneByteTooLong", func(in *donations.DonateInput) { in.Note = strings.Repeat("n", donations.MaxNoteBytes+1) },
				"donations: invalid note: must be at most 2000 bytes, got 2001", "note"},
			{"TenMegabyteNote", func(in *donations.DonateInput) { in.Note = strings.Repeat("n", 10<<20) },
				"donations: invalid note: must be at most 2000 bytes, got 10485760", "note"},
			{"NoteNotUTF8", func(in *donations.DonateInput) { in.Note = "caf\xe9" },
				"donations: invalid note: must be text (UTF-8 without NUL characters)", "note"},
			{"NoteWithNUL", func(in *donations.DonateInput) { in.Note = "a\x00b" },
				"donations: invalid note: must be text (UTF-8 without NUL characters)", "note"},
			{"NameTooLong", func(in *donations.DonateInput) { in.DonorName = strings.Repeat("é", 201) },
				"donations: invalid donor_name: must be at most 200 characters", "donor_name"},
			{"NoFundraiser", func(in *donations.DonateInput) { in.FundraiserID = 0 },
				"donations: invalid fundraiser_id: must name a fundraiser, got 0", "fundraiser_id"},
			{"NegativeEmailID", func(in *donations.DonateInput) { in.EmailID = -1 },
				"donations: invalid email_id: must be 0 (none) or an email's id, got -1", "email_id"},
		}
		for _, tt := range tests {
			in := input(fid)
			tt.modify(&in)
			b.trace.Reset()

			d, err := b.svc.Donate(ctx, in)
			require.EqualError(t, err, tt.want, tt.name)
			require.ErrorIs(t, err, donations.ErrInvalidDonation, tt.name)
			require.NotErrorIs(t, err, donations.ErrUnknownFundraiser, tt.name)
			var ve *donations.ValidationError
			require.ErrorAs(t, err, &ve, tt.name)
			require.Equal(t, tt.field, ve.Field, tt.name)
			require.Zero(t, d, tt.name)
			require.Empty(t, b.trace.RoundTrips(), "%s: statements sent", tt.name)
		}
		b.requireNothingWritten(ctx, t)
		require.Equal(t, 1, b.count(ctx, t, `SELECT count(*) FROM fundraisers`))
	})

	t.Run("ReportsEveryProblemAtOnce", func(t *testing.T) {
		t.Parallel()
		b := setupDonate(ctx, t, nil)

		_, err := b.svc.Donate(ctx, donations.DonateInput{
			FundraiserID: 7, DonorEmail: "nobody", AmountCents: -1, Currency: "usd", Note: strings.Repeat("x", 3000),
		})
		require.EqualError(t, err, "donations: invalid donor_email: must be an email address such as name@example.com\n"+
			"donations: invalid amount_cents: must be more than zero, got -1\n"+
			"donations: invalid note: must be at most 2000 bytes, got 3000")
		require.ErrorIs(t, err, donations.ErrInvalidDonation)
		problems := donations.ValidationErrors(err)
		fields := make([]string, len(problems))
		for i, p := range problems {
			fields[i] = p.Field
		}
		require.Equal(t, []string{"donor_email", "amount_cents", "note"}, fields)
		require.Equal(t, "must be more than zero, got -1", problems[1].Message)
		require.Nil(t, donations.ValidationErrors(errors.New("other")))
		b.requireNothingWritten(ctx, t)
	})

	t.Run("UnknownFundraiserWritesNothing", func(t *testing.T) {
		t.Parallel()
		b := setupDonate(ctx, t, &donateSetupOpts{trace: true})

		for _, succeeded := range []bool{true, false} {
			in := input(424242)
			in.Succeeded = succeeded
			d, err := b.svc.Donate(ctx, in)
			require.EqualError(t, err, "donations: invalid fundraiser_id: no fundraiser has id 424242")
			require.ErrorIs(t, err, donations.ErrUnknownFundraiser)
			require.ErrorIs(t, err, donations.ErrInvalidDonation)
			require.Zero(t, d)
		}
		// Checked in the transaction, which was rolled back.
		require.Equal(t, 2, b.trace.Count("INSERT INTO donations"))
		b.requireNothingWritten(ctx, t)
	})
}

// jsonInt formats an ID for a JSON literal.
func jsonInt(id int64) string {
	raw, _ := json.Marshal(id)
	return string(raw)
}
