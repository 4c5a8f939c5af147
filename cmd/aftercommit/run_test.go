package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRunUsage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout []string // substrings; stdout must be empty when nil
		wantStderr []string // substrings; stderr must be empty when nil
	}{
		{name: "NoArguments", args: nil, wantCode: exitUsage, wantStderr: []string{"Usage:", "migrate"}},
		{name: "RootHelp", args: []string{"--help"}, wantCode: exitOK, wantStdout: []string{"Usage:", "Commands:", "migrate", "help"}},
		{name: "RootH", args: []string{"-h"}, wantCode: exitOK, wantStdout: []string{"Commands:", "migrate"}},
		{name: "HelpCommand", args: []string{"help"}, wantCode: exitOK, wantStdout: []string{"Commands:", "migrate"}},
		{name: "HelpOfMigrate", args: []string{"help", "migrate"}, wantCode: exitOK, wantStdout: []string{"aftercommit migrate up", "-database-url", "-schema", "-yes"}},
		{name: "HelpOfUnknown", args: []string{"help", "frobnicate"}, wantCode: exitUsage, wantStderr: []string{`unknown command "frobnicate"`}},
		{name: "MigrateHelp", args: []string{"migrate", "--help"}, wantCode: exitOK, wantStdout: []string{"aftercommit migrate down --yes", "DATABASE_URL", "AFTERCOMMIT_SCHEMA"}},
		{name: "MigrateH", args: []string{"migrate", "-h"}, wantCode: exitOK, wantStdout: []string{"aftercommit migrate version"}},
		{name: "MigrateUpHelp", args: []string{"migrate", "up", "--help"}, wantCode: exitOK, wantStdout: []string{"aftercommit migrate up"}},
		{name: "UnknownCommand", args: []string{"frobnicate"}, wantCode: exitUsage, wantStderr: []string{`unknown command "frobnicate"`, "aftercommit --help"}},
		{name: "UnknownRootFlag", args: []string{"--verbose", "migrate"}, wantCode: exitUsage, wantStderr: []string{"--verbose", "aftercommit --help"}},
		{name: "MigrateWithoutAction", args: []string{"migrate"}, wantCode: exitUsage, wantStderr: []string{"missing action", "aftercommit migrate --help"}},
		{name: "MigrateSideways", args: []string{"migrate", "sideways"}, wantCode: exitUsage, wantStderr: []string{`unknown action "sideways"`, "aftercommit migrate --help"}},
		{name: "MigrateTwoActions", args: []string{"migrate", "up", "down"}, wantCode: exitUsage, wantStderr: []string{"too many arguments"}},
		{name: "MigrateUnknownFlag", args: []string{"migrate", "up", "--force"}, wantCode: exitUsage, wantStderr: []string{"-force", "aftercommit migrate --help"}},
		{name: "MigrateFlagWithoutValue", args: []string{"migrate", "up", "--schema"}, wantCode: exitUsage, wantStderr: []string{"-schema"}},
		{name: "DownWithoutYes", args: []string{"migrate", "down"}, wantCode: exitUsage, wantStderr: []string{"--yes"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// The environment points at a server that is not there: none of
			// these may try to connect.
			environ := map[string]string{"DATABASE_URL": "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable"}
			res := runCLI(ctx, t, environ, tt.args...)
			require.Equal(t, tt.wantCode, res.code, "stdout: %s\nstderr: %s", res.stdout, res.stderr)
			if tt.wantStdout == nil {
				require.Empty(t, res.stdout)
			}
			for _, w := range tt.wantStdout {
				require.Contains(t, res.stdout, w)
			}
			if tt.wantStderr == nil {
				require.Empty(t, res.stderr)
			}
			for _, w := range tt.wantStderr {
				require.Contains(t, res.stderr, w)
			}
			require.NotContains(t, res.stderr, "cannot reach", "a usage error tried to connect")
		})
	}
}

func TestParseArgs(t *testing.T) {
	t.Parallel()

	var stdout, stderr bytes.Buffer
	e := &env{getenv: func(string) string { return "" }, stdout: &stdout, stderr: &stderr}
	fs := newFlagSet("test", e)
	yes := fs.Bool("yes", false, "")
	name := fs.String("name", "", "")
	usage := func(w io.Writer) { _, _ = fmt.Fprintln(w, "usage of test") } // into a bytes.Buffer: no write error

	positional, code, ok := parseArgs(fs, e, "test", usage, []string{"a", "--yes", "b", "--name", "n", "--", "--c", "-d"})
	require.True(t, ok)
	require.Equal(t, exitOK, code)
	require.True(t, *yes)
	require.Equal(t, "n", *name)
	require.Equal(t, []string{"a", "b", "--c", "-d"}, positional)
	require.Empty(t, stdout.String())
	require.Empty(t, stderr.String())

	_, code, ok = parseArgs(fs, e, "test", usage, []string{"a", "-h"})
	require.False(t, ok)
	require.Equal(t, exitOK, code)
	require.Equal(t, "usage of test\n", stdout.String())
	require.Empty(t, stderr.String())
}
