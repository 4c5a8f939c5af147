//go:build long

package dbtest

// Long is true in the full suite (go test -tags long). Its load runs, bench
// scenarios and fault tests open dozens of connections each, so it keeps
// Go's default test parallelism (see defaultParallel); tests that search
// for a rare interleaving use it to search longer.
const Long = true
