package reporting

import "context"

// WithInjectedFailure returns ctx carrying err: the report and rollup
// workers run with it return err after their write, inside their
// transaction, so that the write and the job's completion roll back. Tests
// put it in the job's context with a River worker middleware.
func WithInjectedFailure(ctx context.Context, err error) context.Context {
	return context.WithValue(ctx, injectedFailureKey{}, err)
}
