package gateway

import (
	"context"
	"time"
)

// KeepSessionsAlive makes one pass of the keeper of held subscriptions as
// if the clock read now, and returns how many deadlines it moved: tests
// drive it instead of waiting for its timer.
func (g *Gateway) KeepSessionsAlive(ctx context.Context, now time.Time) int {
	return g.keeper.pass(ctx, now)
}

// SetClock makes r compute its TTLs from now, with a data grace of grace:
// tests drive it with miniredis's clock. Call it before gateway.New.
func (r *RedisStore) SetClock(now func() time.Time, grace time.Duration) {
	r.now, r.grace = now, grace
}
