package promtest_test

import (
	"testing"

	"github.com/aftercommit/aftercommit/internal/testexit"
)

func TestMain(m *testing.M) { testexit.VerifyTestMain(m) }
