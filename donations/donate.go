package donations

import (
	"context"
	"errors"
	"fmt"
	"net/mail"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	"github.com/aftercommit/aftercommit/outbox"
)

// Limits of DonateInput. They mirror the schema's CHECK constraints, so that
// a person sees which field is wrong instead of a database error.
const (
	// MaxAmountCents is the largest donation Donate accepts, in minor units:
	// 1,000,000.00 in a currency with two decimals.
	MaxAmountCents int64 = 100_000_000
	// MaxNoteBytes is the longest donor note Donate accepts, in bytes of
	// UTF-8.
	MaxNoteBytes = 2000
	// MaxDonorNameChars is the longest donor name Donate accepts, in
	// characters (users.name).
	MaxDonorNameChars = 200
	// MaxDonorEmailBytes is the longest donor address Donate accepts.
	MaxDonorEmailBytes = 254
)

// ErrInvalidDonation is matched (errors.Is) by every error Donate returns
// for input a person must correct: each is a *ValidationError.
var ErrInvalidDonation = errors.New("donations: invalid donation")

// ErrUnknownFundraiser is matched (errors.Is) by the *ValidationError Donate
// returns when DonateInput.FundraiserID names no fundraiser. It also matches
// ErrInvalidDonation.
var ErrUnknownFundraiser = errors.New("donations: unknown fundraiser")

// ValidationError is one problem with a DonateInput. Donate reports every
// problem it finds, joined with errors.Join; ValidationErrors lists them.
type ValidationError struct {
	// Field is the JSON name of the DonateInput field at fault, such as
	// "amount_cents".
	Field string
	// Message says what is wrong in words a person can act on, such as
	// "must be more than zero".
	Message string
	// Err, when set, is a sentinel naming the problem for callers
	// (ErrUnknownFundraiser); Unwrap returns it.
	Err error
}

// Error implements error: "donations: invalid <field>: <message>".
func (e *ValidationError) Error() string {
	return "donations: invalid " + e.Field + ": " + e.Message
}

// Is makes errors.Is(err, ErrInvalidDonation) true.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalidDonation }

// Unwrap returns Err.
func (e *ValidationError) Unwrap() error { return e.Err }

// ValidationErrors returns every *ValidationError in err's tree, in the
// order Donate found them (the order of DonateInput's fields); nil when err
// holds none.
func ValidationErrors(err error) []*ValidationError {
	var out []*ValidationError
	var walk func(error)
	walk = func(err error) {
		switch e := err.(type) { //nolint:errorlint // walks the wrap tree itself: each error as it is, not what it wraps
		case nil:
		case *ValidationError:
			out = append(out, e)
		case interface{ Unwrap() []error }:
			for _, inner := range e.Unwrap() {
				walk(inner)
			}
		case interface{ Unwrap() error }:
			walk(e.Unwrap())
		}
	}
	walk(err)
	return out
}

// Status is the state of a donation's payment.
type Status string

// The statuses of a donation (donations.status).
const (
	// StatusPending: the payment processor has not answered yet. Donate
	// never writes it; it is there for flows that record a donation first.
	StatusPending Status = "pending"
	// StatusSucceeded: the processor took the money.
	StatusSucceeded Status = "succeeded"
	// StatusFailed: the processor refused the payment.
	StatusFailed Status = "failed"
)

// currencies are the ISO 4217 codes Donate accepts.
var currencies = []string{
	"AUD", "BRL", "CAD", "CHF", "CZK", "DKK", "EUR", "GBP", "HKD", "HUF", "ILS",
	"INR", "JPY", "MXN", "NOK", "NZD", "PLN", "SEK", "SGD", "USD", "ZAR",
}

// Currencies returns the ISO 4217 codes Donate accepts, sorted.
func Currencies() []string { return slices.Clone(currencies) }

// DonateInput is a donation as the payment flow reports it. The json tags
// are the names ValidationError.Field uses.
type DonateInput struct {
	// FundraiserID is the fundraiser donated to. It must exist.
	FundraiserID int64 `json:"fundraiser_id"`
	// EmailID is the email whose link led to the donation, 0 for none. An
	// ID that names no email is ignored (stored as none): the link is a
	// hint, and the UpdateEmailDonation worker falls back to the donor's
	// address.
	EmailID int64 `json:"email_id"`
	// DonorEmail is the donor's address, such as name@example.com (no
	// display name; surrounding spaces are ignored). Its user is found by
	// address whatever its case, and created when there is none.
	DonorEmail string `json:"donor_email"`
	// DonorName names a user created for DonorEmail (optional, at most
	// MaxDonorNameChars characters); it defaults to the address's local
	// part. An existing user keeps its name.
	DonorName string `json:"donor_name"`
	// AmountCents is the amount in the currency's minor units: more than
	// zero, at most MaxAmountCents.
	AmountCents int64 `json:"amount_cents"`
	// Currency is an ISO 4217 code from Currencies, in either case
	// ("usd" is stored as "USD").
	Currency string `json:"currency"`
	// Note is the donor's message, at most MaxNoteBytes bytes of UTF-8.
	Note string `json:"note"`
	// Succeeded is the payment processor's result: true when it took the
	// money (status "succeeded"), false when it refused (status "failed").
	Succeeded bool `json:"succeeded"`
}

// Donation is a recorded donation.
type Donation struct {
	// ID is the donation's ID.
	ID int64
	// UserID is the donor's user, found or created by address.
	UserID int64
	// FundraiserID is the fundraiser donated to.
	FundraiserID int64
	// EmailID is the email whose link led to the donation, 0 for none.
	EmailID int64
	// DonorEmail is the donor's address as given.
	DonorEmail string
	// AmountCents is the amount in the currency's minor units.
	AmountCents int64
	// Currency is the ISO 4217 code.
	Currency string
	// Status is StatusSucceeded or StatusFailed.
	Status Status
	// Note is the donor's message.
	Note string
	// CreatedAt is when the donation was recorded.
	CreatedAt time.Time
}

// DonationCreatedEvent is the payload of TopicDonationCreated, published with
// every donation, in its transaction, whatever its status. Subscribers read
// Status: only a succeeded donation counts toward totals.
type DonationCreatedEvent struct {
	// DonationID is the new donation.
	DonationID int64 `json:"donation_id"`
	// FundraiserID is the fundraiser donated to.
	FundraiserID int64 `json:"fundraiser_id"`
	// UserID is the donor's user.
	UserID int64 `json:"user_id"`
	// AmountCents is the amount in the currency's minor units.
	AmountCents int64 `json:"amount_cents"`
	// Currency is the ISO 4217 code.
	Currency string `json:"currency"`
	// Status is "succeeded" or "failed".
	Status Status `json:"status"`
}

// Donate records a donation whose payment the processor has answered for.
//
// It first checks the input and returns every problem it finds, as
// *ValidationError values joined with errors.Join (errors.Is(err,
// ErrInvalidDonation); ValidationErrors lists them), before any SQL runs.
// Then, in one outbox transaction, it finds or creates the donor's user,
// inserts the donation, enqueues UpdateEmailDonationArgs when the payment
// succeeded, and publishes a DonationCreatedEvent on TopicDonationCreated
// either way. A fundraiser that does not exist is found in that transaction
// and reported as a *ValidationError matching ErrUnknownFundraiser; nothing
// is written then. Other errors are the database's, wrapped.
func (s *Service) Donate(ctx context.Context, in DonateInput) (Donation, error) {
	return s.DonateTx(ctx, nil, in)
}

// DonateTx is Donate in the caller's transaction tx, with the business rows
// it writes itself: the donation, its job and its event commit or roll back
// with them. In a transaction from Outbox.InTx the job and event are written
// with its COMMIT; in any other pgx.Tx they are written before DonateTx
// returns, in one more round trip (outbox.Outbox.JoinTx). After an error
// other than a validation error the transaction is aborted and must be
// rolled back. A nil tx is a transaction of its own, as Donate.
//
// Run it at READ COMMITTED (Postgres' default): a donor's user created by a
// concurrent transaction is found by a second statement, which a
// REPEATABLE READ snapshot would not see.
func (s *Service) DonateTx(ctx context.Context, tx pgx.Tx, in DonateInput) (Donation, error) {
	in, err := in.normalize()
	if err != nil {
		return Donation{}, err
	}
	d := Donation{
		FundraiserID: in.FundraiserID,
		DonorEmail:   in.DonorEmail,
		AmountCents:  in.AmountCents,
		Currency:     in.Currency,
		Status:       StatusFailed,
		Note:         in.Note,
	}
	if in.Succeeded {
		d.Status = StatusSucceeded
	}

	_, err = s.ob.JoinTx(ctx, tx, func(ctx context.Context, tx *outbox.Tx) error {
		var userID *int64
		err := tx.QueryRow(ctx, donateInsertSQL,
			in.FundraiserID, in.DonorEmail, in.DonorName, in.EmailID,
			in.AmountCents, in.Currency, string(d.Status), in.Note,
		).Scan(&d.ID, &userID, &d.EmailID, &d.CreatedAt)
		if errors.Is(err, pgx.ErrNoRows) {
			return &ValidationError{
				Field:   "fundraiser_id",
				Message: fmt.Sprintf("no fundraiser has id %d", in.FundraiserID),
				Err:     ErrUnknownFundraiser,
			}
		}
		if err != nil {
			return fmt.Errorf("donations: inserting the donation: %w", err)
		}
		if userID == nil {
			// Another transaction created the donor's user after this
			// statement's snapshot; a new statement sees it.
			var id int64
			if err := tx.QueryRow(ctx, donateFindUserSQL, in.DonorEmail).Scan(&id); err != nil {
				return fmt.Errorf("donations: finding the donor's user of donation %d: %w", d.ID, err)
			}
			if _, err := tx.Exec(ctx, donateSetUserSQL, d.ID, id); err != nil {
				return fmt.Errorf("donations: setting the user of donation %d: %w", d.ID, err)
			}
			userID = &id
		}
		d.UserID = *userID

		if in.Succeeded {
			if err := tx.Enqueue(UpdateEmailDonationArgs{DonationID: d.ID}, nil); err != nil {
				return err
			}
		}
		// Keyed by fundraiser: a consumer of the events relayed to NATS
		// (cmd/worker --nats-url) gets each fundraiser's donations in
		// commit order.
		return tx.PublishKey(TopicDonationCreated, strconv.FormatInt(d.FundraiserID, 10), DonationCreatedEvent{
			DonationID:   d.ID,
			FundraiserID: d.FundraiserID,
			UserID:       d.UserID,
			AmountCents:  d.AmountCents,
			Currency:     d.Currency,
			Status:       d.Status,
		})
	})
	if err != nil {
		return Donation{}, err
	}
	return d, nil
}

// normalize returns in with spaces trimmed, the currency upper-cased and the
// name of a new user filled in, or every problem with it. Sizes are checked
// before anything scans a string, so a huge note costs nothing.
func (in DonateInput) normalize() (DonateInput, error) {
	var errs []error
	fail := func(field, format string, args ...any) {
		errs = append(errs, &ValidationError{Field: field, Message: fmt.Sprintf(format, args...)})
	}

	if in.FundraiserID <= 0 {
		fail("fundraiser_id", "must name a fundraiser, got %d", in.FundraiserID)
	}
	if in.EmailID < 0 {
		fail("email_id", "must be 0 (none) or an email's id, got %d", in.EmailID)
	}

	in.DonorEmail = strings.TrimSpace(in.DonorEmail)
	if msg := checkEmail(in.DonorEmail); msg != "" {
		fail("donor_email", "%s", msg)
	}

	in.DonorName = strings.TrimSpace(in.DonorName)
	switch {
	case len(in.DonorName) > MaxDonorNameChars*utf8.UTFMax,
		utf8.RuneCountInString(in.DonorName) > MaxDonorNameChars:
		fail("donor_name", "must be at most %d characters", MaxDonorNameChars)
	case !utf8.ValidString(in.DonorName) || strings.ContainsRune(in.DonorName, 0):
		fail("donor_name", "must be text (UTF-8 without NUL characters)")
	}

	switch {
	case in.AmountCents <= 0:
		fail("amount_cents", "must be more than zero, got %d", in.AmountCents)
	case in.AmountCents > MaxAmountCents:
		fail("amount_cents", "must be at most %d, got %d", MaxAmountCents, in.AmountCents)
	}

	in.Currency = strings.ToUpper(strings.TrimSpace(in.Currency))
	switch {
	case in.Currency == "":
		fail("currency", "is required; accepted: %s", strings.Join(currencies, ", "))
	case !slices.Contains(currencies, in.Currency):
		fail("currency", "%s is not an accepted currency; accepted: %s", quoteShort(in.Currency), strings.Join(currencies, ", "))
	}

	switch {
	case len(in.Note) > MaxNoteBytes:
		fail("note", "must be at most %d bytes, got %d", MaxNoteBytes, len(in.Note))
	case !utf8.ValidString(in.Note) || strings.ContainsRune(in.Note, 0):
		fail("note", "must be text (UTF-8 without NUL characters)")
	}

	if len(errs) > 0 {
		return in, errors.Join(errs...)
	}
	if in.DonorName == "" {
		in.DonorName = defaultName(in.DonorEmail)
	}
	return in, nil
}

// checkEmail returns what is wrong with addr, or "". It accepts what
// net/mail parses as a bare address whose domain is a host name with a dot.
func checkEmail(addr string) string {
	const want = "must be an email address such as name@example.com"
	switch {
	case addr == "":
		return "is required"
	case len(addr) > MaxDonorEmailBytes:
		return fmt.Sprintf("must be at most %d bytes, got %d", MaxDonorEmailBytes, len(addr))
	}
	parsed, err := mail.ParseAddress(addr)
	if err != nil || parsed.Name != "" || parsed.Address != addr {
		return want
	}
	at := strings.LastIndexByte(addr, '@')
	if at < 1 || !validDomain(addr[at+1:]) {
		return want
	}
	return ""
}

// validDomain reports whether d is a host name of two labels or more, each
// of letters, digits (any script) and inner hyphens.
func validDomain(d string) bool {
	labels := strings.Split(d, ".")
	if len(labels) < 2 {
		return false
	}
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for _, r := range l {
			ok := r == '-' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r >= 0x80 && r != utf8.RuneError
			if !ok {
				return false
			}
		}
	}
	return true
}

// defaultName names a new user after the local part of its address.
func defaultName(addr string) string {
	name := addr[:strings.LastIndexByte(addr, '@')]
	if utf8.RuneCountInString(name) > MaxDonorNameChars {
		name = string([]rune(name)[:MaxDonorNameChars])
	}
	return name
}

// quoteShort quotes s for a message, cut to a few characters: a message
// must not echo a megabyte of input.
func quoteShort(s string) string {
	const limit = 16
	if len(s) <= limit {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("%q…", strings.ToValidUTF8(s[:limit], ""))
}
