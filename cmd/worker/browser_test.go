//go:build long

package main

import (
	"context"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/demo"
)

// skipBrowserEnv opts out of the browser test on a machine without
// Chromium. Nothing else skips it: CI installs Chromium (.ci/run).
const skipBrowserEnv = "AFTERCOMMIT_SKIP_BROWSER_TEST"

// chromium returns the path of a Chromium binary, or fails the test with
// what to do.
func chromium(t *testing.T) string {
	t.Helper()
	if os.Getenv(skipBrowserEnv) == "1" {
		t.Skipf("%s=1: the River UI browser check was skipped on purpose", skipBrowserEnv)
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatalf("the River UI browser check needs headless Chromium: install Debian's chromium package "+
		"(apt-get install chromium), or set %s=1 to skip this one test", skipBrowserEnv)
	return ""
}

// headless runs Chromium headless on url with extra flags and returns its
// standard output.
func headless(ctx context.Context, t *testing.T, bin, url string, extra ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	args := append([]string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
		"--disable-dev-shm-usage", "--no-first-run", "--hide-scrollbars",
		"--user-data-dir=" + t.TempDir(),
		// Let the page's scripts fetch the jobs and render them.
		"--virtual-time-budget=15000",
	}, extra...)
	cmd := exec.CommandContext(ctx, bin, append(args, url)...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, cmd.Run(), "chromium %s: %s", strings.Join(extra, " "), stderr.String())
	return stdout.String()
}

// TestRiverUIInBrowser plays the demo (small scale) against a worker the
// test runs, then loads the worker's River UI in headless Chromium: the
// rendered jobs list names the demo's kinds, and a screenshot of it is
// written outside the repository (its path is logged).
func TestRiverUIInBrowser(t *testing.T) {
	t.Parallel()
	bin := chromium(t)
	ctx := context.Background()
	b := setup(ctx, t)

	h := startRun(ctx, t, b.args(t, "--http", "127.0.0.1:0")...)
	addr := h.httpAddr(t)

	// The demo inserts through its own pool and leaves the jobs to the
	// worker above.
	cfg, err := pgxpool.ParseConfig(b.schema.URL)
	require.NoError(t, err)
	cfg.MaxConns = 10
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	defer pool.Close()
	sum, err := demo.Run(ctx, pool, demo.Config{Scale: 0.02, Seed: 11, ExternalWorkers: true, Schema: b.schema.Name, DrainTimeout: time.Minute})
	require.NoError(t, err)
	require.True(t, sum.OK(), "failed invariants: %+v", sum.Failed())

	base := "http://" + addr + "/riverui/jobs?state=completed&limit=200"
	for _, kind := range []string{
		"donations.update_email_donation",
		"donations.fold_email_counters",
		"inventory.complete_checkout",
		"reporting.create_car_users_in_bulk",
		"reporting.car_report",
	} {
		dom := headless(ctx, t, bin, base+"&kind="+url.QueryEscape(kind), "--dump-dom")
		require.NotContains(t, dom, "Something went wrong", "the River UI failed to render")
		// Each job of the list is a link to /riverui/jobs/<id> named by its kind.
		require.Contains(t, dom, `<span class="truncate">`+kind+`</span>`, "the completed jobs list shows %s", kind)
	}

	page := base
	shot := filepath.Join(os.TempDir(), "aftercommit-riverui-jobs.png")
	_ = os.Remove(shot)
	headless(ctx, t, bin, page, "--window-size=1400,1000", "--screenshot="+shot)
	st, err := os.Stat(shot)
	require.NoError(t, err, "the screenshot was written")
	require.Greater(t, st.Size(), int64(10_000), "the screenshot holds a rendered page")
	t.Logf("River UI screenshot: %s (%d bytes)", shot, st.Size())
}
