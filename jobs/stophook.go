package jobs

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river/riverdriver"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivershared/baseservice"
	"github.com/riverqueue/river/rivershared/riverpilot"
	"github.com/riverqueue/river/rivershared/startstop"
)

// workHooks are what a client's middleware needs told about the client's
// life: start is called when the client starts working jobs, stop after
// its last job returned, when it stops (Stop, StopAndCancel, or the context
// given to Start ending). stop must not return before every write a job
// left to the background (a lock's release) is on the database: a process
// exits once Stop returned.
type workHooks struct {
	start func(ctx context.Context)
	stop  func(ctx context.Context)
}

// hookedDriver is riverpgxv5's driver with a River "pilot" plugin whose one
// service calls the hooks. River has no public stop hook for middleware;
// its client stops plugin services after its producers, that is after the
// last job returned, and Stop returns only once they stopped, which is
// exactly where a flush belongs.
//
// The plugin interfaces (driverPlugin, pilotPlugin, riverpilot.Pilot) are
// River's own extension points, marked unstable; every other Pilot method
// is riverpilot.StandardPilot's, River's default. A River upgrade that
// changes them fails to compile here or fails TestLockReleasedBeforeStopReturns.
//
// With a listen pool, River's LISTEN connection comes from it instead
// (ClientConfig.ListenPool): the pool can then go through a transaction
// pooler, which cannot hold a LISTEN.
type hookedDriver struct {
	*riverpgxv5.Driver
	pilot  *hookedPilot
	listen *riverpgxv5.Driver // nil: pool's
}

var _ riverdriver.Driver[pgx.Tx] = (*hookedDriver)(nil)

// newHookedDriver returns the driver of pool that runs hooks, listening on
// listenPool when it is not nil.
func newHookedDriver(pool, listenPool *pgxpool.Pool, hooks []workHooks) *hookedDriver {
	d := &hookedDriver{Driver: riverpgxv5.New(pool), pilot: &hookedPilot{hooks: hooks}}
	if listenPool != nil {
		d.listen = riverpgxv5.New(listenPool)
	}
	return d
}

// GetListener is River's listener: on the listen pool when there is one.
func (d *hookedDriver) GetListener(params *riverdriver.GetListenenerParams) riverdriver.Listener {
	if d.listen != nil {
		return d.listen.GetListener(params)
	}
	return d.Driver.GetListener(params)
}

// PluginInit is River's driverPlugin hook; the standard pilot needs nothing.
func (d *hookedDriver) PluginInit(*baseservice.Archetype) {}

// PluginPilot is River's driverPlugin hook: the pilot the client uses.
func (d *hookedDriver) PluginPilot() riverpilot.Pilot { return d.pilot }

// hookedPilot is River's standard pilot plus a service that runs the hooks.
type hookedPilot struct {
	riverpilot.StandardPilot
	hooks []workHooks
}

// PluginMaintenanceServices is River's pilotPlugin hook: no service runs
// on the leader only.
func (p *hookedPilot) PluginMaintenanceServices() []startstop.Service { return nil }

// PluginServices is River's pilotPlugin hook: the services of a client that
// works jobs (an insert-only client starts none).
func (p *hookedPilot) PluginServices() []startstop.Service {
	return []startstop.Service{startstop.StartStopFunc(p.run)}
}

// run calls every start hook, then every stop hook once ctx ends (River
// cancels it when it stops its services, after its producers).
func (p *hookedPilot) run(ctx context.Context, shouldStart bool, started, stopped func()) error {
	if !shouldStart {
		return nil
	}
	for _, h := range p.hooks {
		if h.start != nil {
			h.start(ctx)
		}
	}
	go func() {
		started()
		defer stopped()
		<-ctx.Done()
		stopCtx := context.WithoutCancel(ctx)
		for _, h := range p.hooks {
			if h.stop != nil {
				h.stop(stopCtx)
			}
		}
	}()
	return nil
}
