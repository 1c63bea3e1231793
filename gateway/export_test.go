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
