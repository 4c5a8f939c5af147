// Package riversql exports River's own migrations as golang-migrate files of
// package migrations, so that golang-migrate's CLI (or any tool that reads a
// directory of NNNN_name.up.sql / NNNN_name.down.sql) builds River's tables
// together with aftercommit's.
//
// Each River migration of the main line becomes one pair of files named
// NNNN_river_VVV_<River's name>, where NNNN is its golang-migrate version and
// VVV River's own version. A file holds exactly the SQL rivermigrate runs for
// that version when no schema is configured (River's /* TEMPLATE: schema */
// placeholders removed, so table names are unqualified and search_path picks
// the schema), followed by the row rivermigrate writes to or deletes from
// river_migration for it, so that River's own tools (rivermigrate, riverui)
// see the right version after any tool applied the files.
//
// Numbering: River's versions 1..N took 0001..000N; aftercommit's follow.
// A River version that a later River release adds is appended after the
// highest file present (never renumbering a file that may have been
// applied), so River's migrations stay in River's order and golang-migrate
// applies them after everything already there.
//
// The files are written by `go generate ./migrations` (go run
// ./internal/riversql/gen); a test of package migrations fails when they
// differ from what rivermigrate would run for the River version in go.mod.
package riversql

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"

	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
	"github.com/riverqueue/river/rivershared/sqlctemplate"
)

// RegenerateCommand is the command that rewrites River's files, run from the
// module's root.
const RegenerateCommand = "go generate ./migrations"

// riverModule is the module whose version the files' header names.
const riverModule = "github.com/riverqueue/river"

// Rules of rivermigrate's bookkeeping (river_migrate.go): version 1 creates
// river_migration, so its down leaves no row to delete; version 5 adds the
// line column, so rows of versions below it are written without a line and
// deletions of versions up to it match on version alone.
const (
	versionTableAdded      = 1
	versionLineColumnAdded = 5
)

// Errors of Plan and Render.
var (
	// ErrLayout: the directory's River files are not in River's order or
	// name an unknown River version.
	ErrLayout = errors.New("riversql: River's files in the directory are inconsistent")
	// ErrUnterminated: River's SQL does not end with a semicolon, so the
	// bookkeeping statement cannot follow it.
	ErrUnterminated = errors.New("riversql: River's SQL does not end with a semicolon")
)

// File is one migration file: its name in the migrations directory and its
// content.
type File struct {
	Name    string
	Content string
}

// Migrations returns River's main-line migrations, in order, with the SQL
// rivermigrate runs for each when no schema is configured.
func Migrations() ([]rivermigrate.Migration, error) {
	m, err := rivermigrate.New(riverpgxv5.New(nil), nil)
	if err != nil {
		return nil, fmt.Errorf("riversql: building River's migrator: %w", err)
	}
	all := m.AllVersions()
	var replacer sqlctemplate.Replacer
	ctx := sqlctemplate.WithReplacements(context.Background(),
		map[string]sqlctemplate.Replacement{"schema": {Value: ""}}, nil)
	for i, mig := range all {
		for _, sql := range []*string{&mig.SQLUp, &mig.SQLDown} {
			if !strings.Contains(*sql, "/* TEMPLATE: schema */") {
				continue
			}
			out, _, err := replacer.RunSafely(ctx, "$", *sql, nil)
			if err != nil {
				return nil, fmt.Errorf("riversql: River's migration %03d: %w", mig.Version, err)
			}
			*sql = out
		}
		all[i] = mig
	}
	return all, nil
}

// RiverVersion is the version of River's module this module builds with
// (e.g. "v0.51.2"), or "(unknown)".
func RiverVersion() string { return ModuleVersion(riverModule) }

// ModuleVersion is the version of module path this module builds with:
// from the binary's build information, else (test binaries carry none) from
// the go.mod of the working directory or the nearest one above it. It is
// "(unknown)" when neither names it.
func ModuleVersion(path string) string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, d := range info.Deps {
			if d.Path == path {
				if d.Replace != nil {
					d = d.Replace
				}
				return d.Version
			}
		}
	}
	dir, err := os.Getwd()
	for err == nil {
		if b, rerr := os.ReadFile(filepath.Join(dir, "go.mod")); rerr == nil {
			for _, line := range strings.Split(string(b), "\n") {
				f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(line), "require "))
				if len(f) >= 2 && f[0] == path {
					return f[1]
				}
			}
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	return "(unknown)"
}

// fileRE matches a migration file of the directory: version, the River
// version when it is one of River's, the rest of the name, the direction.
var fileRE = regexp.MustCompile(`^([0-9]+)_(?:river_([0-9]{3})_)?(.+)\.(up|down)\.sql$`)

// Plan gives each River migration of all its golang-migrate version, from
// the names of the files already in the directory: a River version that has
// files keeps their version; the others follow the highest version present,
// in River's order. It fails (ErrLayout) when the directory's River files
// name a version River does not have, or are out of River's order.
func Plan(names []string, all []rivermigrate.Migration) (map[int]uint, error) {
	known := make(map[int]bool, len(all))
	for _, m := range all {
		known[m.Version] = true
	}
	plan := map[int]uint{}
	var highest uint
	for _, n := range names {
		sub := fileRE.FindStringSubmatch(n)
		if sub == nil {
			continue
		}
		v, err := strconv.ParseUint(sub[1], 10, 32)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrLayout, n, err)
		}
		highest = max(highest, uint(v))
		if sub[2] == "" {
			continue
		}
		rv, _ := strconv.Atoi(sub[2])
		if !known[rv] {
			return nil, fmt.Errorf("%w: %s is River's migration %03d, which River %s does not have", ErrLayout, n, rv, RiverVersion())
		}
		if prev, ok := plan[rv]; ok && prev != uint(v) {
			return nil, fmt.Errorf("%w: River's migration %03d has files at versions %d and %d", ErrLayout, rv, prev, v)
		}
		plan[rv] = uint(v)
	}
	var last uint
	for _, m := range all {
		v, ok := plan[m.Version]
		if !ok {
			highest++
			v = highest
			plan[m.Version] = v
		}
		if v <= last {
			return nil, fmt.Errorf("%w: River's migration %03d is at version %d, not after the one before it (%d)", ErrLayout, m.Version, v, last)
		}
		last = v
	}
	return plan, nil
}

// Files renders every River migration of all as golang-migrate files, at
// the versions Plan gives them for a directory holding names.
func Files(names []string, all []rivermigrate.Migration) ([]File, error) {
	plan, err := Plan(names, all)
	if err != nil {
		return nil, err
	}
	files := make([]File, 0, 2*len(all))
	for _, m := range all {
		up, down, err := Render(plan[m.Version], m)
		if err != nil {
			return nil, err
		}
		files = append(files, up, down)
	}
	return files, nil
}

// IsRiverFile reports whether name is one of the files Files writes.
func IsRiverFile(name string) bool {
	sub := fileRE.FindStringSubmatch(name)
	return sub != nil && sub[2] != ""
}

// BaseName is the name of m's files without the direction and extension,
// e.g. 0002_river_002_initial_schema for version 2 of River at 2.
func BaseName(version uint, m rivermigrate.Migration) string {
	return fmt.Sprintf("%04d_river_%03d_%s", version, m.Version, strings.ReplaceAll(m.Name, " ", "_"))
}

// Render returns the up and down files of River migration m at
// golang-migrate version version; m's SQL must be what rivermigrate runs
// (Migrations gives it).
func Render(version uint, m rivermigrate.Migration) (up, down File, err error) {
	base := BaseName(version, m)
	upSQL, err := render(m, "up", m.SQLUp, bookkeepingUp(m.Version))
	if err != nil {
		return up, down, err
	}
	downSQL, err := render(m, "down", m.SQLDown, bookkeepingDown(m.Version))
	if err != nil {
		return up, down, err
	}
	return File{Name: base + ".up.sql", Content: upSQL}, File{Name: base + ".down.sql", Content: downSQL}, nil
}

func render(m rivermigrate.Migration, direction, sql, bookkeeping string) (string, error) {
	body := strings.TrimRight(sql, " \t\r\n")
	if !strings.HasSuffix(body, ";") {
		return "", fmt.Errorf("%w: migration %03d %s", ErrUnterminated, m.Version, direction)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "-- Code generated by %s from River %s; DO NOT EDIT.\n", RegenerateCommand, RiverVersion())
	fmt.Fprintf(&b, "--\n-- River's migration %03d, %q (main line), %s.\n", m.Version, m.Name, direction)
	b.WriteString("-- Between the markers: the SQL rivermigrate runs for it when no schema is\n")
	b.WriteString("-- configured (names unqualified: search_path picks the schema). After them:\n")
	b.WriteString("-- the row rivermigrate writes to or deletes from river_migration for it, so\n")
	b.WriteString("-- River's own tools (rivermigrate, riverui) see the version.\n")
	b.WriteString("\n-- River's SQL begins.\n")
	b.WriteString(sql)
	if !strings.HasSuffix(sql, "\n") {
		b.WriteString("\n")
	}
	b.WriteString("-- River's SQL ends.\n\n")
	fmt.Fprintf(&b, "-- rivermigrate's bookkeeping for version %03d, %s:\n", m.Version, direction)
	if bookkeeping == "" {
		b.WriteString("-- none: this drops river_migration itself.\n")
	} else {
		b.WriteString(bookkeeping + "\n")
	}
	return b.String(), nil
}

// RiverSQL extracts River's SQL from the content of a file Render wrote.
func RiverSQL(content string) (string, bool) {
	const begin, end = "\n-- River's SQL begins.\n", "-- River's SQL ends.\n"
	i := strings.Index(content, begin)
	j := strings.LastIndex(content, end)
	if i < 0 || j < i+len(begin) {
		return "", false
	}
	return content[i+len(begin) : j], true
}

func bookkeepingUp(v int) string {
	if v < versionLineColumnAdded {
		return fmt.Sprintf("INSERT INTO river_migration (version) VALUES (%d);", v)
	}
	return fmt.Sprintf("INSERT INTO river_migration (line, version) VALUES ('main', %d);", v)
}

func bookkeepingDown(v int) string {
	switch {
	case v <= versionTableAdded:
		return ""
	case v <= versionLineColumnAdded:
		return fmt.Sprintf("DELETE FROM river_migration WHERE version = %d;", v)
	default:
		return fmt.Sprintf("DELETE FROM river_migration WHERE line = 'main' AND version = %d;", v)
	}
}

// Diff compares the River files of a directory (names and contents in
// have) with want, and describes every difference: a file missing, one
// that differs, one River no longer has.
func Diff(have map[string]string, want []File) []string {
	var out []string
	wanted := map[string]bool{}
	for _, f := range want {
		wanted[f.Name] = true
		got, ok := have[f.Name]
		switch {
		case !ok:
			out = append(out, f.Name+" is missing")
		case got != f.Content:
			out = append(out, f.Name+" differs from what River would run")
		}
	}
	for n := range have {
		if IsRiverFile(n) && !wanted[n] {
			out = append(out, n+" is not one of River's migrations")
		}
	}
	slices.Sort(out)
	return out
}
