//go:build !nodevdb

package devdb

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/testcontainers/testcontainers-go"
	tclog "github.com/testcontainers/testcontainers-go/log"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
)

// startTimeout bounds the pull, the start and the wait for the server to
// accept connections.
const startTimeout = 2 * time.Minute

// StartContainer starts Image with testcontainers and returns the URL of its
// postgres database (user and password postgres) and a function that removes
// it. It fails fast when no Docker engine is reachable. testcontainers' own
// reaper (Ryuk) removes the container too when the process dies without
// calling stop.
//
// logger, when set, receives testcontainers' log lines at debug level
// (including its process-wide lines, from the first call on); nil leaves
// them on testcontainers' default logger, stderr.
func StartContainer(ctx context.Context, logger *slog.Logger) (url string, stop func(), err error) {
	defer func() {
		// testcontainers has panicked on hosts without Docker in the past;
		// a missing engine must end as an error, not a crash.
		if r := recover(); r != nil {
			err = fmt.Errorf("testcontainers: %v", r)
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()

	opts := []testcontainers.ContainerCustomizer{
		tcpostgres.WithDatabase("postgres"),
		tcpostgres.WithUsername("postgres"),
		tcpostgres.WithPassword("postgres"),
		tcpostgres.BasicWaitStrategies(),
	}
	if logger != nil {
		l := slogPrintf{logger}
		setDefaultLogger.Do(func() { tclog.SetDefault(l) })
		opts = append([]testcontainers.ContainerCustomizer{testcontainers.WithLogger(l)}, opts...)
	}
	ctr, err := tcpostgres.Run(ctx, Image, opts...)
	if err != nil {
		if ctr != nil {
			_ = testcontainers.TerminateContainer(ctr)
		}
		return "", nil, err
	}
	url, err = ctr.ConnectionString(ctx, "sslmode=disable")
	if err != nil {
		_ = testcontainers.TerminateContainer(ctr)
		return "", nil, err
	}
	return url, func() { _ = testcontainers.TerminateContainer(ctr) }, nil
}

// setDefaultLogger makes the first logger given to StartContainer
// testcontainers' process-wide one, which prints its banner and its
// reaper's lines.
var setDefaultLogger sync.Once

// slogPrintf is testcontainers' logger interface on a *slog.Logger.
type slogPrintf struct{ logger *slog.Logger }

func (l slogPrintf) Printf(format string, v ...any) {
	l.logger.Debug("testcontainers: " + strings.TrimSpace(fmt.Sprintf(format, v...)))
}
