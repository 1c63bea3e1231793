package gateway

import (
	"context"
	"time"
)

// PollFunc is Poll for a long-poll that waits without a goroutine (parked
// outside net/http), as SubscribeFunc is Subscribe: it keeps the session
// alive for wait plus the session timeout, as Poll does; the caller calls
// Ready for the first read and after each wake-up, and Check(ctx, 0) at the
// end of the window. Like Poll's, its first read acknowledges the cursor of
// tok (the client's mailbox records up to it are dropped). Release it once
// answered, or Close it if the client left.
func (g *Gateway) PollFunc(ctx context.Context, tok SessionToken, wait time.Duration, wake func()) (*Subscription, error) {
	sub, err := g.subscribe(ctx, tok, subscribeOptions{extra: wait, notify: wake})
	if err != nil {
		return nil, err
	}
	sub.acknowledges = true
	return sub, nil
}

// Release stops the subscription's wake-ups and leaves its session's
// deadline as it is: for a parked long-poll that answered, whose session
// keeps what its start gave it (the window plus the session timeout), as a
// Poll's does. Close, by contrast, moves the deadline to the session
// timeout from now, one more store round trip, for a client that left.
func (sub *Subscription) Release() { sub.release() }
