package dbtest

import (
	"context"

	"github.com/aftercommit/aftercommit/internal/devdb"
)

// startContainer starts devdb's postgres:16 container — the one
// `aftercommit demo` and `worker --dev` start — and returns its URL and a
// function that removes it. It fails fast when no Docker engine is
// reachable. testcontainers' log lines go to stderr, beside the test's.
func startContainer(ctx context.Context) (url string, stop func(), err error) {
	return devdb.StartContainer(ctx, nil)
}
