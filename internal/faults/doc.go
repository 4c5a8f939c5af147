// Package faults holds aftercommit's fault suite: tests that break things
// on purpose — kill processes, roll back at random — against the real
// database and check that nothing is lost and nothing is done twice.
// RELIABILITY.md lists every scenario, its command and the figures of the
// last run.
package faults
