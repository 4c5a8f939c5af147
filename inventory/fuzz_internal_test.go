package inventory

import (
	"context"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/aftercommit/aftercommit/outbox"
)

// fuzzSKURules is MaxSKUBytes's and validSKU's documented rule: 1 to
// MaxSKUBytes bytes of UTF-8 without NUL (products.sku's CHECK, and text).
func fuzzSKURules(sku string) bool {
	return sku != "" && len(sku) <= MaxSKUBytes && utf8.ValidString(sku) && !strings.ContainsRune(sku, 0)
}

// FuzzValidSKU checks validSKU on any string: it never panics, it refuses
// with a *ValidationError of field "sku" matching ErrInvalidCheckout, and it
// accepts exactly the SKUs of 1 to MaxSKUBytes bytes of UTF-8 without NUL.
func FuzzValidSKU(f *testing.F) {
	for _, s := range []string{"SKU-1", "é", "", "\x00", "a\x00b", "\xff", "\xe2\x82", strings.Repeat("s", MaxSKUBytes), strings.Repeat("s", MaxSKUBytes+1), strings.Repeat("é", 50), strings.Repeat("é", 51)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, sku string) {
		err := validSKU(sku)
		want := fuzzSKURules(sku)
		if want != (err == nil) {
			t.Fatalf("validSKU(%q) = %v, want accepted = %v", sku, err, want)
		}
		if err == nil {
			return
		}
		var ve *ValidationError
		if !errors.As(err, &ve) || error(ve) != err || ve.Field != "sku" || !errors.Is(err, ErrInvalidCheckout) { //nolint:errorlint // identity: the error itself must be the *ValidationError, not wrap one
			t.Fatalf("validSKU(%q) = %#v, want a *ValidationError of field sku", sku, err)
		}
		if len(err.Error()) > 200 {
			t.Fatalf("the message is %d bytes: it must not echo the SKU", len(err.Error()))
		}
	})
}

// FuzzBeginCheckoutInput feeds BeginCheckout any SKU and quantity with a
// context that is already cancelled, on a service whose pool is lazy and
// names a port nothing listens on: input BeginCheckout refuses comes back
// as a *ValidationError (found before any SQL, as documented), and input it
// accepts reaches the connection pool and comes back as the context's
// error. Nothing connects anywhere.
func FuzzBeginCheckoutInput(f *testing.F) {
	pool, err := pgxpool.New(f.Context(), "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=1")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(pool.Close)
	client, err := river.NewClient[pgx.Tx](riverpgxv5.New(nil), &river.Config{})
	if err != nil {
		f.Fatal(err)
	}
	ob, err := outbox.New(pool, client, &outbox.Config{DirectInsert: true})
	if err != nil {
		f.Fatal(err)
	}
	s, err := NewService(pool, ob, nil)
	if err != nil {
		f.Fatal(err)
	}
	ctx, cancel := context.WithCancel(f.Context())
	cancel()

	f.Add("SKU-1", 1)
	f.Add("SKU-1", MaxQuantity)
	f.Add("SKU-1", MaxQuantity+1)
	f.Add("SKU-1", 0)
	f.Add("SKU-1", -1)
	f.Add("", 1)
	f.Add("a\x00", 1)
	f.Add(strings.Repeat("s", MaxSKUBytes+1), 5)
	f.Fuzz(func(t *testing.T, sku string, quantity int) {
		c, err := s.BeginCheckout(ctx, sku, quantity)
		if c != (Checkout{}) {
			t.Fatalf("BeginCheckout returned a checkout with an error: %#v, %v", c, err)
		}
		skuOK := fuzzSKURules(sku)
		quantityOK := quantity >= 1 && quantity <= MaxQuantity
		var ve *ValidationError
		switch {
		case !skuOK || !quantityOK:
			if !errors.As(err, &ve) || !errors.Is(err, ErrInvalidCheckout) {
				t.Fatalf("BeginCheckout(%q, %d) = %v, want a *ValidationError", sku, quantity, err)
			}
			wantField := "quantity"
			if !skuOK { // the SKU is checked first
				wantField = "sku"
			}
			if ve.Field != wantField {
				t.Fatalf("BeginCheckout(%q, %d) blames %q, want %q", sku, quantity, ve.Field, wantField)
			}
		default:
			if errors.As(err, &ve) || !errors.Is(err, context.Canceled) {
				t.Fatalf("BeginCheckout(%q, %d) = %v, want it accepted (the cancelled context's error)", sku, quantity, err)
			}
		}
	})
}
