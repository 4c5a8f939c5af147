package riversql_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/riverqueue/river/rivermigrate"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/riversql"
)

func riverMigrations(t *testing.T) []rivermigrate.Migration {
	t.Helper()
	all, err := riversql.Migrations()
	require.NoError(t, err)
	require.NotEmpty(t, all)
	return all
}

// names lists up and down files for each version → identifier.
func names(files map[uint]string) []string {
	var out []string
	for v, id := range files {
		out = append(out, fmt.Sprintf("%04d_%s.up.sql", v, id), fmt.Sprintf("%04d_%s.down.sql", v, id))
	}
	return append(out, "migrations.go")
}

func TestMigrationsAreUnqualified(t *testing.T) {
	t.Parallel()
	for _, m := range riverMigrations(t) {
		for _, sql := range []string{m.SQLUp, m.SQLDown} {
			require.NotContains(t, sql, "TEMPLATE", "migration %d", m.Version)
		}
	}
	require.Contains(t, riverMigrations(t)[1].SQLUp, "CREATE TABLE river_job(")
}

func TestPlan(t *testing.T) {
	t.Parallel()
	all := riverMigrations(t)
	ours := map[uint]string{9: "pings", 10: "job_locks", 19: "stuck_jobs_rescue_comment"}
	current := map[uint]string{}
	for i, m := range all {
		current[uint(i+1)] = fmt.Sprintf("river_%03d_%s", m.Version, strings.ReplaceAll(m.Name, " ", "_"))
	}
	for v, id := range ours {
		current[v] = id
	}

	t.Run("EmptyDirectory", func(t *testing.T) {
		t.Parallel()
		plan, err := riversql.Plan(nil, all)
		require.NoError(t, err)
		for _, m := range all {
			require.Equal(t, uint(m.Version), plan[m.Version])
		}
	})

	t.Run("KeepsTheNumbersPresent", func(t *testing.T) {
		t.Parallel()
		plan, err := riversql.Plan(names(current), all)
		require.NoError(t, err)
		for _, m := range all {
			require.Equal(t, uint(m.Version), plan[m.Version])
		}
	})

	t.Run("ANewRiverVersionFollowsTheHighestFile", func(t *testing.T) {
		t.Parallel()
		next := append(slices.Clone(all), rivermigrate.Migration{Version: 9, Name: "something new", SQLUp: "SELECT 1;", SQLDown: "SELECT 1;"})
		plan, err := riversql.Plan(names(current), next)
		require.NoError(t, err)
		require.Equal(t, uint(20), plan[9])
		up, down, err := riversql.Render(plan[9], next[8])
		require.NoError(t, err)
		require.Equal(t, "0020_river_009_something_new.up.sql", up.Name)
		require.Equal(t, "0020_river_009_something_new.down.sql", down.Name)
	})

	t.Run("UnknownRiverVersion", func(t *testing.T) {
		t.Parallel()
		_, err := riversql.Plan(append(names(current), "0030_river_012_future.up.sql"), all)
		require.ErrorIs(t, err, riversql.ErrLayout)
		require.ErrorContains(t, err, "River's migration 012")
	})

	t.Run("OutOfRiversOrder", func(t *testing.T) {
		t.Parallel()
		swapped := map[uint]string{}
		for v, id := range current {
			swapped[v] = id
		}
		swapped[2], swapped[3] = current[3], current[2]
		_, err := riversql.Plan(names(swapped), all)
		require.ErrorIs(t, err, riversql.ErrLayout)
		require.ErrorContains(t, err, "not after the one before it")
	})
}

func TestRender(t *testing.T) {
	t.Parallel()
	all := riverMigrations(t)
	for _, tc := range []struct {
		river            int
		wantUp, wantDown string
	}{
		{1, "INSERT INTO river_migration (version) VALUES (1);", "-- none: this drops river_migration itself."},
		{4, "INSERT INTO river_migration (version) VALUES (4);", "DELETE FROM river_migration WHERE version = 4;"},
		{5, "INSERT INTO river_migration (line, version) VALUES ('main', 5);", "DELETE FROM river_migration WHERE version = 5;"},
		{6, "INSERT INTO river_migration (line, version) VALUES ('main', 6);", "DELETE FROM river_migration WHERE line = 'main' AND version = 6;"},
	} {
		m := all[tc.river-1]
		up, down, err := riversql.Render(uint(tc.river), m)
		require.NoError(t, err)
		require.True(t, strings.HasSuffix(up.Content, "\n"+tc.wantUp+"\n"), up.Content)
		require.True(t, strings.HasSuffix(down.Content, "\n"+tc.wantDown+"\n"), down.Content)
		sql, ok := riversql.RiverSQL(up.Content)
		require.True(t, ok)
		require.Equal(t, strings.TrimSuffix(m.SQLUp, "\n"), strings.TrimSuffix(sql, "\n"))
		require.Contains(t, up.Content, "DO NOT EDIT")
		require.Contains(t, up.Content, riversql.RiverVersion())
	}

	_, _, err := riversql.Render(30, rivermigrate.Migration{Version: 30, Name: "x", SQLUp: "SELECT 1", SQLDown: "SELECT 1;"})
	require.ErrorIs(t, err, riversql.ErrUnterminated)
}

func TestRiverVersion(t *testing.T) {
	t.Parallel()
	// Test binaries carry no module versions: this one comes from go.mod.
	require.Regexp(t, `^v[0-9]+\.[0-9]+\.[0-9]+`, riversql.RiverVersion())
	require.Equal(t, "(unknown)", riversql.ModuleVersion("example.com/not/a/dependency"))
}
