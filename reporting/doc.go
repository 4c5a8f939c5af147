// Package reporting is the reporting domain: cars and their users, bulk
// car-user creation that enqueues one de-duplicated report job per car in one
// round trip, rollups kept fresh by many small jobs, and job latency reports.
//
// The package is laid out by the project's design; its tables, service and
// workers arrive with the reporting issue (#6). It imports outbox and jobs,
// never another domain.
package reporting
