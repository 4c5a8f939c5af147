package natsrelay_test

import (
	"fmt"

	"github.com/aftercommit/aftercommit/outbox/natsrelay"
)

// The subjects events go to: a consumer filters by topic with
// "<prefix>.donation.created.>" or by key with "<prefix>.*.*.42" (a topic
// of two words).
func ExampleSubject() {
	fmt.Println(natsrelay.Subject(natsrelay.SubjectPrefixDefault, "donation.created", "42", true))
	fmt.Println(natsrelay.Subject(natsrelay.SubjectPrefixDefault, "donation.created", "", false))
	fmt.Println(natsrelay.Subject(natsrelay.SubjectPrefixDefault, "user.renamed", "ada@example.com", true))
	// Output:
	// aftercommit.events.donation.created.42
	// aftercommit.events.donation.created._
	// aftercommit.events.user.renamed._YWRhQGV4YW1wbGUuY29t
}
