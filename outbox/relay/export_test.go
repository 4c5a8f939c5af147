package relay

import "context"

// StripeOf is stripeOf, for the tests.
var StripeOf = stripeOf

// MoveNext is the loop's take (above the scan floor), for the tests.
func (r *Relay) MoveNext(ctx context.Context) (MoveResult, error) { return r.moveNext(ctx) }
