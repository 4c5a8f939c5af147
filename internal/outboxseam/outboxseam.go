// Package outboxseam joins package jobs to package outbox. An outbox built by
// jobs.NewOutbox takes the registry's queues, topics, subscriptions, kind
// defaults and queue-lock keys through it, so outbox.Config shows a user
// only what a user sets.
package outboxseam

import "github.com/riverqueue/river"

// Subscriber turns a published event (its topic and JSON payload) into a job
// written in the same flush; nil args: no job.
type Subscriber func(topic, key string, payload []byte) (river.JobArgs, *river.InsertOpts, error)

// Registry is what an outbox takes from a job registry.
type Registry struct {
	// Queues are the only queues jobs may be enqueued to; nil: any, empty:
	// none (a registry always gives a list).
	Queues []string
	// Topics are the only topics events may be published on; nil: any,
	// empty: none.
	Topics []string
	// Subscribers returns the subscribers of a topic. Nil: none.
	Subscribers func(topic string) []Subscriber
	// KindDefaults gives a kind the queue and priority it is enqueued with
	// when the caller's options leave them unset (ok false: no defaults).
	// They win over the args' own InsertOpts(); explicit options win over
	// them.
	KindDefaults func(kind string) (queue string, priority int, ok bool)
	// DedupeKey, returning ok, gives the de-duplication key of args in
	// place of outbox.Deduper and the JSON encoding (the queue-lock key of
	// queue-locked kinds).
	DedupeKey func(args river.JobArgs) (key string, ok bool)
	// Sequenced reports whether args belong to a job sequence, which only
	// the outbox table and its relay can keep in order.
	Sequenced func(args river.JobArgs) bool
}

// Attach records reg on the *outbox.Config cfg points to, for outbox.New. It
// is set by package outbox when it is initialised; cfg is typed any because
// this package cannot import outbox, which imports it.
var Attach func(cfg any, reg *Registry)
