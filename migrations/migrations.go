// Package migrations is the one complete, ordered schema of aftercommit as
// golang-migrate SQL files (NNNN_name.up.sql / NNNN_name.down.sql), embedded
// in the binary: River's own migrations first, then aftercommit's.
//
//   - 0001–0008 are River's main-line migrations 001–008
//     (NNNN_river_VVV_name), generated from River's migrator by
//     `go generate ./migrations` (package internal/riversql): exactly the SQL
//     rivermigrate runs, plus the row it keeps in river_migration, so that
//     River's own tools see the right version. A test fails when they differ
//     from what the River version in go.mod would run.
//   - 0009 onwards are aftercommit's. A migration of a later River release
//     is appended after the highest file present, by the same command.
//
// Any golang-migrate runner applies them: `aftercommit migrate up`, the test
// harness, or golang-migrate's own CLI:
//
//	migrate -path migrations -database 'pgx5://user@host/db?search_path=app' up
//
// Table names are unqualified, so search_path decides the schema; that is
// how the test harness gives each test its own schema.
//
// Never edit a file that has been applied somewhere; add a new one.
package migrations

import "embed"

//go:generate go run ../internal/riversql/gen -dir .

// FS holds every migration file, River's and aftercommit's.
//
//go:embed *.sql
var FS embed.FS
