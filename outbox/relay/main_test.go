package relay_test

import (
	"testing"

	"github.com/aftercommit/aftercommit/internal/dbtest"
)

func TestMain(m *testing.M) { dbtest.WrapTestMain(m) }
