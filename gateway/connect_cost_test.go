package gateway_test

import (
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicegw/sluice/gateway"
)

// TestConnectRoundTrips counts the Redis round trips of the steps of a
// connect, so that none can silently grow: a LongPoll connect and its first
// poll (nothing to deliver yet), and an SSE connect that joins a channel
// (connect, the join, the stream's subscription and its first read). It
// fails if a step takes more than its budget; lower a budget when a step
// gets cheaper.
func TestConnectRoundTrips(t *testing.T) {
	forEachRedis(t, func(t *testing.T, b redisBackend, c redis.UniversalClient, prefix string) {
		if b.name == "cluster" {
			// Its nodes cache scripts each for itself, so a count depends
			// on which nodes the random session ids land on. (A Cluster
			// connect is one round trip more: its socket index waits for
			// the data, on another node.)
			t.Skip("round trips on a Cluster vary with its per-node script caches; counted on one server")
		}
		gw, _, counter := countedEchoGateway(t, c, prefix, gateway.Config{
			SessionTimeout:     time.Minute,
			MaxSessionsPerUser: 10,
		})
		budgets := map[string]int64{
			"connect": 1, // the mailbox's head, the session's deadline, data and socket index, pipelined

			"first poll": 2, // touch+load; read the mailbox
			"join":       5, // lock+load; the channel's head; save; publish; clear the outbox and unlock
			// Connect, then the join applied to the new session without
			// loading or locking it: the mailbox's head with the session;
			// the channel's head; publish; save.
			"connect and join": 4,
			"subscribe opened": 0, // the session as ConnectAndHandle saved it
			"subscribe":        1, // touch+load
			"first read":       1, // the mailbox and the channel, pipelined
			"idle heartbeat":   0,
			"close the stream": 1, // give the session the timeout from now
		}
		ctx := t.Context()
		got := map[string]int64{}
		step := func(name string, fn func() error) {
			t.Helper()
			var err error
			trips, _ := counter.Measure(func() { err = fn() })
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			got[name] = max(got[name], trips)
		}
		// The first round loads the scripts into Redis: count the second.
		for round := range 2 {
			if round == 1 {
				clear(got)
			}
			var lp, sse gateway.SessionToken
			step("connect", func() (err error) {
				lp, err = gw.Connect(ctx, gateway.ConnectInfo{Token: "1", Vsn: "2.0.0"})
				return err
			})
			step("first poll", func() error { _, err := gw.Poll(ctx, lp, time.Millisecond); return err })

			step("connect", func() (err error) {
				sse, err = gw.Connect(ctx, gateway.ConnectInfo{Token: "2", Vsn: "2.0.0"})
				return err
			})
			step("join", func() error {
				return gw.Handle(ctx, sse.SessionID, [][]byte{[]byte(`["1","1","room:x","phx_join",{}]`)})
			})
			var opened gateway.Opened
			step("connect and join", func() (err error) {
				opened, err = gw.ConnectAndHandle(ctx, gateway.ConnectInfo{Token: "3", Vsn: "2.0.0"}, [][]byte{[]byte(`["1","1","room:x","phx_join",{}]`)})
				return err
			})
			var fresh *gateway.Subscription
			step("subscribe opened", func() (err error) {
				fresh, err = gw.SubscribeOpened(ctx, opened, time.Second, func() {})
				return err
			})
			step("first read", func() error {
				d, err := fresh.Ready(ctx)
				if err == nil && len(d.Frames) != 1 {
					t.Errorf("first read of an opened session: %d frames, want the join's reply", len(d.Frames))
				}
				return err
			})
			fresh.Close()
			var sub *gateway.Subscription
			step("subscribe", func() (err error) { sub, err = gw.SubscribeFunc(ctx, sse, time.Second, func() {}); return err })
			step("first read", func() error {
				d, err := sub.Ready(ctx)
				if err == nil && len(d.Frames) != 1 {
					t.Errorf("first read: %d frames, want the join's reply", len(d.Frames))
				}
				return err
			})
			step("idle heartbeat", func() error { _, err := sub.Check(ctx, time.Second); return err })
			step("close the stream", func() error { sub.Close(); return nil })
		}
		for name, budget := range budgets {
			t.Logf("%s: %d round trips", name, got[name])
			if got[name] > budget {
				t.Errorf("%s took %d Redis round trips, more than its budget of %d", name, got[name], budget)
			}
		}
	})
}
