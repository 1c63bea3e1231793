package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/sluicegw/sluice/gateway"
	"github.com/sluicegw/sluice/internal/redistest"
	"github.com/sluicegw/sluice/topics"
)

type echoRoom struct{}

func (echoRoom) Join(*gateway.Context, json.RawMessage) gateway.Reply { return gateway.Ok(nil) }
func (echoRoom) HandleIn(*gateway.Context, string, json.RawMessage) gateway.Reply {
	return gateway.NoReply
}

// benchGateway is a gateway on Redis (SLUICE_TEST_REDIS, else miniredis) whose
// client counts round trips.
func benchGateway(b *testing.B) (*gateway.Gateway, *redistest.Counter) {
	b.Helper()
	opts := &redis.Options{Addr: miniredis.RunT(b).Addr()}
	if u := os.Getenv("SLUICE_TEST_REDIS"); u != "" {
		var err error
		if opts, err = redis.ParseURL(u); err != nil {
			b.Fatal(err)
		}
	}
	client := redis.NewClient(opts)
	b.Cleanup(func() { _ = client.Close() })
	prefix := fmt.Sprintf("sluicetest:bench:%d:", time.Now().UnixNano())
	b.Cleanup(func() {
		ctx := context.Background()
		iter := client.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		for iter.Next(ctx) {
			client.Del(ctx, iter.Val())
		}
	})
	counter := &redistest.Counter{}
	client.AddHook(counter)
	store := gateway.NewRedisStore(client, gateway.RedisOptions{Prefix: prefix})
	router := &topics.Router[gateway.Handler]{}
	router.Add("room:*", echoRoom{})
	gw, err := gateway.New(gateway.Config{
		Router:   router,
		Sessions: store, Presence: store,
		Broker: topics.NewRedisBroker(client, topics.RedisOptions{Prefix: prefix}),
		Authenticate: func(_ context.Context, info gateway.ConnectInfo) (gateway.Identity, error) {
			return gateway.Identity{UserID: json.RawMessage(info.Token)}, nil
		},
		SessionTimeout: time.Hour,
	})
	if err != nil {
		b.Fatal(err)
	}
	return gw, counter
}

func joinedSession(b *testing.B, gw *gateway.Gateway, user string) gateway.SessionToken {
	b.Helper()
	ctx := context.Background()
	tok, err := gw.Connect(ctx, gateway.ConnectInfo{Token: user, Vsn: "2.0.0"})
	if err != nil {
		b.Fatal(err)
	}
	if err := gw.Handle(ctx, tok.SessionID, [][]byte{[]byte(`["1","1","room:bench","phx_join",{}]`)}); err != nil {
		b.Fatal(err)
	}
	d, err := gw.Poll(ctx, tok, time.Millisecond)
	if err != nil {
		b.Fatal(err)
	}
	return d.Token
}

// BenchmarkRedisBroadcast measures what one broadcast costs Redis with 100
// sessions joined to the topic: the promise is one round trip, one command,
// whatever the audience.
func BenchmarkRedisBroadcast(b *testing.B) {
	gw, counter := benchGateway(b)
	for i := range 100 {
		joinedSession(b, gw, fmt.Sprint(i+1))
	}
	ctx := context.Background()
	payload := json.RawMessage(`{"body":"hello"}`)
	counter.Trips.Store(0)
	counter.Cmds.Store(0)
	b.ResetTimer()
	for b.Loop() {
		if err := gw.Broadcast(ctx, "room:bench", "msg", payload); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(counter.Trips.Load())/float64(b.N), "redis-trips/op")
	b.ReportMetric(float64(counter.Cmds.Load())/float64(b.N), "redis-cmds/op")
}

// BenchmarkRedisPoll measures a long-poll round trip that returns one
// message: a broadcast is published (not counted), then the session polls.
func BenchmarkRedisPoll(b *testing.B) {
	gw, counter := benchGateway(b)
	tok := joinedSession(b, gw, "1")
	ctx := context.Background()
	payload := json.RawMessage(`{"body":"hello"}`)
	var trips, cmds int64
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		if err := gw.Broadcast(ctx, "room:bench", "msg", payload); err != nil {
			b.Fatal(err)
		}
		t0, c0 := counter.Trips.Load(), counter.Cmds.Load()
		b.StartTimer()
		d, err := gw.Poll(ctx, tok, time.Second)
		if err != nil || len(d.Frames) != 1 {
			b.Fatalf("poll: %d frames, %v", len(d.Frames), err)
		}
		b.StopTimer()
		trips += counter.Trips.Load() - t0
		cmds += counter.Cmds.Load() - c0
		tok = d.Token
		b.StartTimer()
	}
	b.ReportMetric(float64(trips)/float64(b.N), "redis-trips/op")
	b.ReportMetric(float64(cmds)/float64(b.N), "redis-cmds/op")
}

// BenchmarkRedisStreamFanout measures what one broadcast costs Redis with
// 100 SSE-style subscriptions to the topic on this instance, counting the
// publish and every subscriber's read: the first woken subscriber reads the
// record and the others are answered from it.
func BenchmarkRedisStreamFanout(b *testing.B) {
	gw, counter := benchGateway(b)
	ctx := context.Background()
	subs := make([]*gateway.Subscription, 100)
	for i := range subs {
		var err error
		if subs[i], err = gw.Subscribe(ctx, joinedSession(b, gw, fmt.Sprint(i+1))); err != nil {
			b.Fatal(err)
		}
		defer subs[i].Close()
		if _, err := subs[i].Next(ctx, time.Millisecond); err != nil { // the first read of everything
			b.Fatal(err)
		}
	}
	payload := json.RawMessage(`{"body":"hello"}`)
	counter.Trips.Store(0)
	counter.Cmds.Store(0)
	b.ResetTimer()
	for b.Loop() {
		if err := gw.Broadcast(ctx, "room:bench", "msg", payload); err != nil {
			b.Fatal(err)
		}
		for i, sub := range subs {
			d, err := sub.Next(ctx, time.Second)
			if err != nil || len(d.Frames) != 1 {
				b.Fatalf("subscriber %d: %d frames, %v", i, len(d.Frames), err)
			}
		}
	}
	b.ReportMetric(float64(counter.Trips.Load())/float64(b.N), "redis-trips/op")
	b.ReportMetric(float64(counter.Cmds.Load())/float64(b.N), "redis-cmds/op")
}

// BenchmarkRedisSSEConnect measures an SSE connect that joins a channel, as
// the SSE transport makes it: ConnectAndHandle with the join, the stream's
// subscription (SubscribeOpened) and its first read, then the stream's end
// (Close). It reports the Redis round trips per connect and the process's
// CPU time per connect (user + system, the go-redis client's included).
func BenchmarkRedisSSEConnect(b *testing.B) {
	gw, counter := benchGateway(b)
	ctx := context.Background()
	join := [][]byte{[]byte(`["1","1","room:bench","phx_join",{}]`)}
	counter.Trips.Store(0)
	counter.Cmds.Store(0)
	cpu0 := cpuTime()
	i := 0
	for b.Loop() {
		i++
		// As the SSE transport does for ?join=.
		opened, err := gw.ConnectAndHandle(ctx, gateway.ConnectInfo{Token: fmt.Sprint(i), Vsn: "2.0.0"}, join)
		if err != nil {
			b.Fatal(err)
		}
		sub, err := gw.SubscribeOpened(ctx, opened, 15*time.Second, func() {})
		if err != nil {
			b.Fatal(err)
		}
		if d, err := sub.Ready(ctx); err != nil || len(d.Frames) != 1 {
			b.Fatalf("first read: %v, %v", d, err)
		}
		sub.Close()
	}
	b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op")
	b.ReportMetric(float64(counter.Trips.Load())/float64(b.N), "redis-trips/op")
	b.ReportMetric(float64(counter.Cmds.Load())/float64(b.N), "redis-cmds/op")
}

// cpuTime is the CPU time this process used so far (user + system).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
