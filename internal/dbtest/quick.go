//go:build !long

package dbtest

// Long is false in the quick suite (go test without -tags long), whose
// tests raise the default parallelism (see defaultParallel) and keep
// searches for rare interleavings short.
const Long = false
