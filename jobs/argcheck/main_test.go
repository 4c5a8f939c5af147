package argcheck_test

import (
	"log/slog"
	"testing"

	"github.com/aftercommit/aftercommit/internal/dbtest"
)

func TestMain(m *testing.M) { dbtest.WrapTestMain(m) }

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
