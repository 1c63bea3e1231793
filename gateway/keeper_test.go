package gateway_test

import (
	"errors"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
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
// gone. A pass that only moves deadlines costs two commands (one ZADD, one
// ZMSCORE), not two per session. The keeper's clock is driven by the test
// (no waiting on timers).
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
			case moved == n && trips == 1 && cmds == 2:
				refreshes++
			default:
				t.Errorf("keeper pass %d: moved %d deadlines in %d round trips, %d commands; want none, or all %d in one round trip of 2 commands", k, moved, trips, cmds, n)
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

// holdIdle connects n sessions and holds a subscription of each, as parked
// streams do, closed at the end of the test.
func holdIdle(t *testing.T, gw *gateway.Gateway, n int, heartbeat time.Duration) []*idleSub {
	t.Helper()
	ctx := t.Context()
	subs := make([]*idleSub, n)
	for i := range subs {
		s := &idleSub{}
		var err error
		if s.tok, err = gw.Connect(ctx, gateway.ConnectInfo{Token: strconv.Itoa(i + 1), Vsn: "2.0.0"}); err != nil {
			t.Fatal(err)
		}
		if s.sub, err = gw.SubscribeFunc(ctx, s.tok, heartbeat, func() { s.woken.Add(1) }); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.sub.Close)
		subs[i] = s
	}
	return subs
}

// TestKeeperCostIsPerBatch: a keeper pass over 2,500 held sessions sends
// Redis a few commands per batch of 1,000 (a ZADD and a ZMSCORE), not a few
// per session, so what idle streams cost Redis hardly grows with them.
func TestKeeperCostIsPerBatch(t *testing.T) {
	const (
		n       = 2500
		timeout = time.Hour
	)
	forEachRedis(t, func(t *testing.T, b redisBackend, c redis.UniversalClient, prefix string) {
		if b.name == "cluster" {
			t.Skip("2,500 connects: counted on one server (TestIdleSubscriptionsCostRedisNothing runs on a Cluster)")
		}
		gw, store, counter := countedEchoGateway(t, c, prefix, gateway.Config{SessionTimeout: timeout})
		start := time.Now()
		subs := holdIdle(t, gw, n, 15*time.Second)
		var moved int
		trips, cmds := counter.Measure(func() { moved = gw.KeepSessionsAlive(t.Context(), start.Add(timeout/2)) })
		if moved != n || trips != 3 || cmds != 6 {
			t.Errorf("a keeper pass over %d held sessions moved %d deadlines in %d round trips, %d commands; want all in 3 round trips of 2 commands (batches of 1,000)", n, moved, trips, cmds)
		}
		// The deadlines did move: nothing to claim at the old ones.
		if got, err := store.Claim(t.Context(), start.Add(timeout+time.Minute), time.Minute, 10); err != nil || len(got) != 0 {
			t.Errorf("Claim past the deadlines the keeper moved = %d sessions, %v; want none", len(got), err)
		}
		for _, s := range subs {
			if w := s.woken.Load(); w != 0 {
				t.Fatalf("a live idle subscription was woken %d times", w)
			}
		}
	})
}

// TestKeeperRenewsHeldSessionsData: a stream held for days (a WebSocket)
// never outlives its session's data, whose TTL ends a grace past the
// deadline it was last renewed with: the keeper renews it, every half grace
// or so, in passes of their own. On miniredis, whose clock the test drives
// with the keeper's and the store's (grace shortened to 2 h); a session
// nobody holds shows that the clock does expire data.
func TestKeeperRenewsHeldSessionsData(t *testing.T) {
	const (
		n       = 3
		timeout = time.Hour
		grace   = 2 * time.Hour
		period  = timeout / 4
	)
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	start := time.Now()
	var clock atomic.Int64 // the fake time, unix ns
	clock.Store(start.UnixNano())
	gw, store, counter := countedEchoGatewayWith(t, c, "", gateway.Config{SessionTimeout: timeout}, func(st *gateway.RedisStore) {
		st.SetClock(func() time.Time { return time.Unix(0, clock.Load()) }, grace)
	})
	ctx := t.Context()
	subs := holdIdle(t, gw, n, 15*time.Second)
	unheld, err := gw.Connect(ctx, gateway.ConnectInfo{Token: "0", Vsn: "2.0.0"})
	if err != nil {
		t.Fatal(err)
	}
	renewals := 0
	for k := 1; k <= 3*24*4; k++ { // three days, every period
		now := start.Add(time.Duration(k) * period)
		clock.Store(now.UnixNano())
		mr.FastForward(period)
		trips, cmds := counter.Measure(func() { gw.KeepSessionsAlive(ctx, now) })
		switch {
		case trips == 0, trips == 1 && cmds == 2:
		case trips == 1 && cmds == 2+n:
			renewals++
		default:
			t.Fatalf("keeper pass at %v: %d round trips, %d commands; want none, a move (2 commands) or a renewal (2 + %d)", now.Sub(start), trips, cmds, n)
		}
		for _, s := range subs {
			if _, err := store.Load(ctx, s.tok.SessionID); err != nil {
				t.Fatalf("a session held for %v: Load = %v, want its data kept", now.Sub(start), err)
			}
			if w := s.woken.Load(); w != 0 {
				t.Fatalf("a held session's subscription was woken at %v", now.Sub(start))
			}
		}
	}
	if _, err := store.Load(ctx, unheld.SessionID); !errors.Is(err, gateway.ErrNoSession) {
		t.Errorf("a session nobody held, 3 days later: Load = %v, want ErrNoSession (its data expired)", err)
	}
	// Renewed every hour (half the grace) or so, not at every move.
	if renewals < 3*24/2 || renewals > 3*24 {
		t.Errorf("%d renewals over 3 days with a grace of %v; want one every 1 to 2 h", renewals, grace)
	}
}
