// Package redistest holds helpers for tests and benchmarks that talk to
// Redis through go-redis.
package redistest

import (
	"context"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// Counter is a go-redis hook counting what reaches the connection: round
// trips (one per command sent alone, one per pipeline) and commands. Add it
// with client.AddHook.
type Counter struct{ Trips, Cmds atomic.Int64 }

// DialHook implements redis.Hook.
func (c *Counter) DialHook(next redis.DialHook) redis.DialHook { return next }

// ProcessHook implements redis.Hook: one round trip, one command.
func (c *Counter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.Trips.Add(1)
		c.Cmds.Add(1)
		return next(ctx, cmd)
	}
}

// ProcessPipelineHook implements redis.Hook: one round trip, its commands.
func (c *Counter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.Trips.Add(1)
		c.Cmds.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}

// Measure returns the round trips and commands that fn sent.
func (c *Counter) Measure(fn func()) (trips, cmds int64) {
	t0, c0 := c.Trips.Load(), c.Cmds.Load()
	fn()
	return c.Trips.Load() - t0, c.Cmds.Load() - c0
}
