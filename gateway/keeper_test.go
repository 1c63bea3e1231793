package gateway_test

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicegw/sluice/gateway"
)

// idleSub is one held subscription of TestIdleSubscriptionsCostRedisNothing.
type idleSub struct {
	tok   gateway.SessionToken
	sub   *gateway.Subscription
	woken atomic.Int64
}

// TestIdleSubscriptionsCostRedisNothing: N held subscriptions (parked SSE
// streams, WebSockets) that nothing is published to send Redis no command
// at their heartbeats; their sessions are kept alive by the keeper, in one
// round trip for all of them when their deadlines need moving, and a
// session gone from the store wakes its subscription, which then finds it
// gone. The keeper's clock is driven by the test (no waiting on timers).
func TestIdleSubscriptionsCostRedisNothing(t *testing.T) {
	const (
		n         = 30
		heartbeat = 15 * time.Second
		timeout   = time.Hour // the keeper looks every 15 min, its deadlines move every 30
	)
	forEachRedis(t, func(t *testing.T, _ redisBackend, c redis.UniversalClient, prefix string) {
		gw, store, counter := countedEchoGateway(t, c, prefix, gateway.Config{SessionTimeout: timeout})
		ctx := t.Context()
		start := time.Now()
		subs := make([]*idleSub, n)
		for i := range subs {
			s := &idleSub{}
			var err error
			if s.tok, err = gw.Connect(ctx, gateway.ConnectInfo{Token: "1", Vsn: "2.0.0"}); err != nil {
				t.Fatal(err)
			}
			if err := gw.Handle(ctx, s.tok.SessionID, [][]byte{[]byte(`["1","1","room:idle","phx_join",{}]`)}); err != nil {
				t.Fatal(err)
			}
			if s.sub, err = gw.SubscribeFunc(ctx, s.tok, heartbeat, func() { s.woken.Add(1) }); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(s.sub.Close)
			if d, err := s.sub.Ready(ctx); err != nil || len(d.Frames) != 1 {
				t.Fatalf("first read: %v, %v; want the join's reply", d, err)
			}
			subs[i] = s
		}

		// Heartbeats of idle subscriptions: nothing at all.
		trips, cmds := counter.Measure(func() {
			for range 8 {
				for _, s := range subs {
					if d, err := s.sub.Check(ctx, heartbeat); err != nil || len(d.Frames) != 0 {
						t.Fatalf("Check of an idle subscription = %v, %v; want nothing", d, err)
					}
				}
			}
		})
		if trips != 0 || cmds != 0 {
			t.Errorf("%d idle subscriptions, 8 heartbeats each: %d round trips, %d commands; want none", n, trips, cmds)
		}

		// The keeper, every 15 minutes of its clock for 2 hours: a deadline
		// is moved when it would come within half the timeout, all of them
		// in one round trip.
		period := timeout / 4
		refreshes := 0
		for k := 1; k <= 8; k++ {
			var moved int
			trips, cmds := counter.Measure(func() { moved = gw.KeepSessionsAlive(ctx, start.Add(time.Duration(k)*period)) })
			switch {
			case moved == 0 && trips == 0:
			case moved == n && trips == 1 && cmds == 2*n:
				refreshes++
			default:
				t.Errorf("keeper pass %d: moved %d deadlines in %d round trips, %d commands; want none, or all %d in one round trip of 2 commands each", k, moved, trips, cmds, n)
			}
		}
		if refreshes < 3 || refreshes > 4 {
			t.Errorf("over 2 h of a 1 h session timeout the keeper moved the deadlines %d times; want 3 or 4 (every half timeout or so)", refreshes)
		}
		// Alive well past the point where their first deadline would have
		// passed: nothing to claim at 2 h (their deadlines are ≥ 2h30).
		if got, err := store.Claim(ctx, start.Add(2*time.Hour), time.Minute, 10); err != nil || len(got) != 0 {
			t.Errorf("Claim at 2 h = %d sessions, %v; want none (kept alive)", len(got), err)
		}
		for _, s := range subs {
			if w := s.woken.Load(); w != 0 {
				t.Errorf("an idle subscription was woken %d times", w)
			}
		}

		// A session removed behind the gateway's back (no mailbox record):
		// the keeper's next refresh finds it gone and wakes its subscription,
		// whose read then says so.
		gone := subs[0]
		if _, err := store.Remove(ctx, gone.tok.SessionID); err != nil {
			t.Fatal(err)
		}
		moved := 0
		for k := 9; k <= 12 && gone.woken.Load() == 0; k++ {
			moved += gw.KeepSessionsAlive(ctx, start.Add(time.Duration(k)*period))
		}
		if gone.woken.Load() == 0 {
			t.Fatal("the subscription of a removed session was never woken by the keeper")
		}
		if moved != n-1 {
			t.Errorf("the keeper moved %d deadlines, want the %d live sessions'", moved, n-1)
		}
		if _, err := gone.sub.Ready(ctx); !errors.Is(err, gateway.ErrNoSession) {
			t.Errorf("Ready after the keeper found the session gone = %v, want ErrNoSession", err)
		}
		for _, s := range subs[1:] {
			if w := s.woken.Load(); w != 0 {
				t.Errorf("a live idle subscription was woken %d times", w)
			}
		}
	})
}
