package app_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/donations"
	"github.com/aftercommit/aftercommit/internal/app"
	"github.com/aftercommit/aftercommit/inventory"
	"github.com/aftercommit/aftercommit/jobs"
)

func TestRegistry(t *testing.T) {
	t.Parallel()

	reg := app.Registry(nil)
	require.NoError(t, reg.Err())
	require.Equal(t, []string{
		jobs.PingKind,
		jobs.PruneEventsKind,
		donations.FoldEmailCountersKind,
		donations.RecountFundraiserKind,
		donations.RecountUserKind,
		donations.UpdateEmailDonationKind,
		inventory.CompleteCheckoutKind,
		inventory.ExpireCheckoutKind,
		inventory.PruneExpiredClaimsKind,
	}, reg.Kinds())
}
