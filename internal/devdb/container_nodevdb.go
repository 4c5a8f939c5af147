//go:build nodevdb

package devdb

import (
	"context"
	"log/slog"
)

// StartContainer fails with ErrNoContainers: this binary was built with
// -tags nodevdb, without testcontainers.
func StartContainer(context.Context, *slog.Logger) (url string, stop func(), err error) {
	return "", nil, ErrNoContainers
}
