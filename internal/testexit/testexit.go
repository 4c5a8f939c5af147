// Package testexit ends a test binary without the race detector's idle
// second. It is a test fixture; production code never imports it.
//
// A binary built with -race sleeps one second in ThreadSanitizer's exit
// handler (its atexit_sleep_ms, so that other threads can still report
// races) before it exits. `go test -race ./...` runs a binary per package,
// two at a time, so that sleep alone costs the quick command about 12 s of
// wall time. Exit skips it when it has nothing left to report: the run
// passed, the race detector found no race at all (during the tests or
// after them), and no coverage profile waits to be written by the exit
// hooks. Every other exit goes through os.Exit as before.
package testexit

import (
	"os"
	"syscall"
	"testing"

	"go.uber.org/goleak"
)

// Exit ends the process with code.
func Exit(code int) {
	if code == 0 && raceEnabled && raceErrors() == 0 && testing.CoverMode() == "" {
		syscall.Exit(0)
	}
	os.Exit(code)
}

// VerifyTestMain is goleak.VerifyTestMain ending with Exit: it runs the
// tests and fails a passing run whose goroutines leaked.
func VerifyTestMain(m *testing.M, opts ...goleak.Option) {
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(opts...); err != nil {
			_, _ = os.Stderr.WriteString("goleak: Errors on successful test run: " + err.Error() + "\n") // stderr is all there is to tell
			code = 1
		}
	}
	Exit(code)
}
