// Command gen writes River's migrations into the migrations directory as
// golang-migrate files (see package riversql). Run it from the module's root
// as `go generate ./migrations`, after changing River's version in go.mod.
//
//	go run ./internal/riversql/gen [-dir migrations] [-check]
//
// It rewrites the River files whose content changed, adds those of new
// River versions after the highest file present, and prints one line per
// file written. With -check it writes nothing and exits 1 when a file would
// change.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/aftercommit/aftercommit/internal/riversql"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("gen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "migrations", "the migrations directory")
	check := fs.Bool("check", false, "write nothing; exit 1 when a file would change")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	changed, err := sync(*dir, *check, stdout)
	if err != nil {
		_, _ = fmt.Fprintln(stderr, "riversql gen:", err)
		return 1
	}
	if *check && changed > 0 {
		_, _ = fmt.Fprintf(stderr, "riversql gen: %d River files out of date: run %s\n", changed, riversql.RegenerateCommand)
		return 1
	}
	return 0
}

func sync(dir string, check bool, stdout io.Writer) (int, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	have := map[string]string{}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
		if riversql.IsRiverFile(e.Name()) {
			b, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err != nil {
				return 0, err
			}
			have[e.Name()] = string(b)
		}
	}
	all, err := riversql.Migrations()
	if err != nil {
		return 0, err
	}
	want, err := riversql.Files(names, all)
	if err != nil {
		return 0, err
	}
	stale := riversql.Diff(have, want)
	if check {
		for _, s := range stale {
			_, _ = fmt.Fprintln(stdout, s)
		}
		return len(stale), nil
	}
	written := 0
	for _, f := range want {
		if have[f.Name] == f.Content {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, f.Name), []byte(f.Content), 0o644); err != nil {
			return written, err
		}
		_, _ = fmt.Fprintln(stdout, "wrote", filepath.Join(dir, f.Name))
		written++
	}
	return written, nil
}
