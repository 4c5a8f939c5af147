package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/testexit"
)

func TestMain(m *testing.M) { testexit.VerifyTestMain(m) }

// copyDir copies the migrations directory into a temporary one.
func copyDir(t *testing.T) string {
	t.Helper()
	src := filepath.Join("..", "..", "..", "migrations")
	dst := t.TempDir()
	entries, err := os.ReadDir(src)
	require.NoError(t, err)
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644))
	}
	return dst
}

func TestGen(t *testing.T) {
	t.Parallel()

	t.Run("CommittedFilesAreUpToDate", func(t *testing.T) {
		t.Parallel()
		var stdout, stderr bytes.Buffer
		code := run([]string{"-dir", filepath.Join("..", "..", "..", "migrations"), "-check"}, &stdout, &stderr)
		require.Equal(t, 0, code, stderr.String())
		require.Empty(t, stdout.String())
	})

	t.Run("RewritesAChangedFileOnly", func(t *testing.T) {
		t.Parallel()
		dir := copyDir(t)
		name := "0004_river_004_pending_and_more.up.sql"
		want, err := os.ReadFile(filepath.Join(dir, name))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte("-- edited by hand\n"), 0o644))
		require.NoError(t, os.Remove(filepath.Join(dir, "0006_river_006_bulk_unique.down.sql")))

		var stdout, stderr bytes.Buffer
		require.Equal(t, 1, run([]string{"-dir", dir, "-check"}, &stdout, &stderr))
		require.Contains(t, stderr.String(), "2 River files out of date: run go generate ./migrations")

		stdout.Reset()
		require.Equal(t, 0, run([]string{"-dir", dir}, &stdout, &stderr), stderr.String())
		require.Equal(t, []string{
			"wrote " + filepath.Join(dir, name),
			"wrote " + filepath.Join(dir, "0006_river_006_bulk_unique.down.sql"),
		}, strings.Split(strings.TrimSpace(stdout.String()), "\n"))
		got, err := os.ReadFile(filepath.Join(dir, name))
		require.NoError(t, err)
		require.Equal(t, string(want), string(got))
	})
}
