//go:build !long

package dbtest

// longBuild is false in the quick suite, whose tests raise the default
// parallelism (see defaultParallel).
const longBuild = false
