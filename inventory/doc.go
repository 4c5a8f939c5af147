// Package inventory is the flash-sale checkout domain: products, checkouts
// and inventory claims taken with SELECT … FOR UPDATE, expiring after ten
// minutes (thirty more after a failed payment), released after payment by a
// job, and pruned by a periodic job, with zero oversell.
//
// The package is laid out by the project's design; its tables, service and
// workers arrive with the inventory issue (#5). It imports outbox and jobs,
// never another domain.
package inventory
