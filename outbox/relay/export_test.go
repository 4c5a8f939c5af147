package relay

// StripeOf is stripeOf, for the tests.
var StripeOf = stripeOf
