//go:build long

package dbtest

// longBuild is true in the full suite (go test -tags long): its load runs,
// bench scenarios and fault tests open dozens of connections each, so it
// keeps Go's default test parallelism (see defaultParallel).
const longBuild = true
