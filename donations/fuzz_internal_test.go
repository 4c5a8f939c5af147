package donations

import (
	"errors"
	"net/mail"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

// donateFields are DonateInput's JSON names in declaration order, the order
// ValidationErrors lists problems in.
var donateFields = []string{"fundraiser_id", "email_id", "donor_email", "donor_name", "amount_cents", "currency", "note"}

// FuzzDonateInputValidation feeds DonateInput.normalize, the check Donate
// runs before any SQL, arbitrary input. It must never panic; every problem
// must be a *ValidationError matching ErrInvalidDonation, at most one per
// field, listed in field order; the simple fields must be refused exactly
// when they break their documented bounds; and accepted input must satisfy
// those bounds and the schema's CHECK constraints (so Donate never meets a
// constraint error), and normalize again to itself.
func FuzzDonateInputValidation(f *testing.F) {
	f.Add(int64(1), int64(0), "ada@example.com", "Ada", int64(500), "usd", "thanks", true)
	f.Add(int64(7), int64(3), "  b@xn--bcher-kva.example  ", "", int64(MaxAmountCents), "EUR", "", false)
	f.Add(int64(1), int64(0), "\"quoted local\"@example.com", "", int64(1), " jpy ", "é", true)
	f.Add(int64(1), int64(0), "Ada <ada@example.com>", "Ada", int64(1), "USD", "", true)
	f.Add(int64(1), int64(0), "ada@localhost", strings.Repeat("é", 201), int64(1), "USD", "", true)
	f.Add(int64(0), int64(-1), "", "\x00", int64(0), "", "\xff", false)
	f.Add(int64(-5), int64(0), "@example.com", "Bo", int64(MaxAmountCents+1), "XXX", strings.Repeat("n", MaxNoteBytes+1), true)
	f.Add(int64(1), int64(0), strings.Repeat("a", 64)+"@"+strings.Repeat("b", 190)+".com", "", int64(2), "gbp", "a\x00b", true)
	f.Fuzz(func(t *testing.T, fundraiserID, emailID int64, email, name string, amount int64, currency, note string, succeeded bool) {
		in := DonateInput{
			FundraiserID: fundraiserID, EmailID: emailID, DonorEmail: email, DonorName: name,
			AmountCents: amount, Currency: currency, Note: note, Succeeded: succeeded,
		}
		out, err := in.normalize()

		// The fields whose bounds are simple enough to restate here.
		trimmedName := strings.TrimSpace(name)
		trimmedCurrency := strings.ToUpper(strings.TrimSpace(currency))
		trimmedEmail := strings.TrimSpace(email)
		want := map[string]bool{
			"fundraiser_id": fundraiserID <= 0,
			"email_id":      emailID < 0,
			"donor_name":    utf8.RuneCountInString(trimmedName) > MaxDonorNameChars || !utf8.ValidString(trimmedName) || strings.ContainsRune(trimmedName, 0),
			"amount_cents":  amount <= 0 || amount > MaxAmountCents,
			"currency":      !slices.Contains(Currencies(), trimmedCurrency),
			"note":          len(note) > MaxNoteBytes || !utf8.ValidString(note) || strings.ContainsRune(note, 0),
		}
		// The address is checked by net/mail; these are necessary conditions.
		emailMustFail := trimmedEmail == "" || len(trimmedEmail) > MaxDonorEmailBytes ||
			!strings.Contains(trimmedEmail, "@") || !utf8.ValidString(trimmedEmail)

		got := map[string]bool{}
		if err != nil {
			if !errors.Is(err, ErrInvalidDonation) {
				t.Fatalf("normalize error does not match ErrInvalidDonation: %v", err)
			}
			joined, ok := err.(interface{ Unwrap() []error })
			if !ok {
				t.Fatalf("normalize error %T is not an errors.Join of problems: %v", err, err)
			}
			var fields []string
			for _, e := range joined.Unwrap() {
				var ve *ValidationError
				if !errors.As(e, &ve) || error(ve) != e { //nolint:errorlint // identity: the error itself must be the *ValidationError, not wrap one
					t.Fatalf("problem %T is not a *ValidationError: %v", e, e)
				}
				if got[ve.Field] {
					t.Fatalf("field %q reported twice: %v", ve.Field, err)
				}
				got[ve.Field] = true
				fields = append(fields, ve.Field)
			}
			if n := len(ValidationErrors(err)); n != len(fields) || n == 0 {
				t.Fatalf("ValidationErrors lists %d problems, the join holds %d", n, len(fields))
			}
			if !slices.IsSortedFunc(fields, func(a, b string) int {
				return slices.Index(donateFields, a) - slices.Index(donateFields, b)
			}) || slices.ContainsFunc(fields, func(f string) bool { return !slices.Contains(donateFields, f) }) {
				t.Fatalf("problems %v are not DonateInput fields in declaration order", fields)
			}
			if len(err.Error()) > 4096 {
				t.Fatalf("the message is %d bytes: it must not echo the input", len(err.Error()))
			}
		}
		for field, bad := range want {
			if got[field] != bad {
				t.Fatalf("field %s: refused = %v, want %v (input %#v; error %v)", field, got[field], bad, in, err)
			}
		}
		if emailMustFail && !got["donor_email"] {
			t.Fatalf("donor_email %q accepted, but it cannot be an address", email)
		}
		if err != nil {
			return
		}

		// Accepted: the documented bounds and the schema's constraints hold.
		emailChars, nameChars := utf8.RuneCountInString(out.DonorEmail), utf8.RuneCountInString(out.DonorName)
		switch {
		case out.AmountCents < 1 || out.AmountCents > MaxAmountCents:
			t.Fatalf("accepted amount %d", out.AmountCents)
		case !slices.Contains(Currencies(), out.Currency) || len(out.Currency) != 3 || strings.ToUpper(out.Currency) != out.Currency:
			t.Fatalf("accepted currency %q", out.Currency)
		case len(out.Note) > MaxNoteBytes || !utf8.ValidString(out.Note) || strings.ContainsRune(out.Note, 0) || out.Note != note:
			t.Fatalf("accepted note %q (from %q)", out.Note, note)
		case out.DonorEmail != trimmedEmail:
			t.Fatalf("accepted address %q is not the trimmed input %q", out.DonorEmail, email)
		case emailChars < 3 || len(out.DonorEmail) > MaxDonorEmailBytes ||
			!utf8.ValidString(out.DonorEmail) || strings.ContainsRune(out.DonorEmail, 0):
			t.Fatalf("accepted address %q breaks users.email's CHECK (3 to 254 characters of text)", out.DonorEmail)
		case nameChars < 1 || nameChars > MaxDonorNameChars ||
			!utf8.ValidString(out.DonorName) || strings.ContainsRune(out.DonorName, 0):
			t.Fatalf("accepted name %q (from %q, address %q) breaks users.name's CHECK (1 to 200 characters of text)", out.DonorName, name, out.DonorEmail)
		case trimmedName != "" && out.DonorName != trimmedName:
			t.Fatalf("accepted name %q is not the trimmed input %q", out.DonorName, name)
		case out.FundraiserID != fundraiserID || out.EmailID != emailID || out.Succeeded != succeeded:
			t.Fatalf("normalize changed an ID or the result: %#v from %#v", out, in)
		}
		if parsed, err := mail.ParseAddress(out.DonorEmail); err != nil || parsed.Address != out.DonorEmail {
			t.Fatalf("accepted address %q does not parse as itself (%v)", out.DonorEmail, err)
		}
		again, err := out.normalize()
		if err != nil || again != out {
			t.Fatalf("normalize is not idempotent: %#v → %#v, %v", out, again, err)
		}
	})
}
