package sse_test

import (
	"strconv"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/sluicegw/sluice/internal/redistest"
)

// redisEnv is a test server on an in-process Redis whose client counts what
// it sends.
func redisEnv(t *testing.T, cfg envConfig) (*env, *redistest.Counter) {
	t.Helper()
	mr := miniredis.RunT(t)
	client := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = client.Close() })
	counter := &redistest.Counter{}
	client.AddHook(counter)
	cfg.Redis, cfg.RedisPrefix = client, "sluicetest:sse:"
	return newEnv(t, cfg), counter
}

// TestIdleParkedStreamsCostRedisNothing: parked streams that nothing is
// published to send Redis nothing at their heartbeats, however many go by
// (their sessions are kept alive in batches by the gateway, every quarter
// of the session timeout: an hour here, so not within this test).
func TestIdleParkedStreamsCostRedisNothing(t *testing.T) {
	const n, beats = 6, 4
	e, counter := redisEnv(t, envConfig{Heartbeat: 50 * time.Millisecond, SessionTimeout: time.Hour})
	streams := make([]*stream, n)
	for i := range streams {
		room := "room:idle" + strconv.Itoa(i) // alone: no presence of others
		s, _ := e.connect(t, strconv.Itoa(i), "2.0.0", "join="+room)
		requireJoined(t, s.frames(t, 3), room, "join:1", strconv.Itoa(i))
		streams[i] = s
	}
	trips, cmds := counter.Measure(func() {
		for _, s := range streams {
			for got := 0; got < beats; {
				ev := s.must(t)
				if ev.Name != "heartbeat" {
					t.Fatalf("an idle stream got %s, want heartbeats only", ev)
				}
				got++
			}
		}
	})
	if trips != 0 || cmds != 0 {
		t.Errorf("%d idle parked streams, %d heartbeats each: %d Redis round trips, %d commands; want none", n, beats, trips, cmds)
	}
	// Still alive and delivering.
	for i, s := range streams {
		room := "room:idle" + strconv.Itoa(i)
		e.broadcast(t, room, 1)
		s.expect(t, news(room, 1))
	}
}
