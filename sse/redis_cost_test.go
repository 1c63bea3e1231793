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

// TestConnectRoundTrips counts the Redis round trips of an SSE connect that
// joins a channel at once (GET ?join=, until the join's reply, presence
// diff and state are on the stream): the connect, the join (applied under
// the session's lock, with its presence), the subscription and its first
// read. It fails if a change adds one; lower the budget when one goes.
func TestConnectRoundTrips(t *testing.T) {
	// Connect 1 (the mailbox's head and the session, pipelined); the
	// join, applied to the new session without loading or locking it
	// again, 8 (the channel's head, the test room's presence list, put and
	// list, the reply, the diff and the presence_state published in order,
	// one save); the subscription 0 (it starts from the session as saved);
	// first read 1. It was 18 before the session's create and its
	// lock+load went to one round trip each, 16 before
	// Gateway.ConnectAndHandle, 12 before SubscribeOpened, 11 before the
	// mailbox's head went with the session's creation.
	const budget = 10
	// Without ?join=: connect 1, first read 1.
	const budgetNoJoin = 2
	e, counter := redisEnv(t, envConfig{SessionTimeout: time.Hour})
	// The first connect loads the scripts into Redis; count the second.
	s, _ := e.connect(t, "1", "2.0.0", "join=room:warm")
	requireJoined(t, s.frames(t, 3), "room:warm", "join:1", "1")
	trips, cmds := counter.Measure(func() {
		s, _ := e.connect(t, "2", "2.0.0", "join=room:cold")
		requireJoined(t, s.frames(t, 3), "room:cold", "join:1", "2")
	})
	t.Logf("an SSE connect with a join: %d round trips, %d commands", trips, cmds)
	if trips > budget {
		t.Errorf("an SSE connect with a join took %d Redis round trips (%d commands), more than its budget of %d", trips, cmds, budget)
	}
	// Counted until the stream's first heartbeat, which comes after its
	// first read (and costs Redis nothing: TestIdleParkedStreamsCostRedisNothing).
	e, counter = redisEnv(t, envConfig{SessionTimeout: time.Hour, Heartbeat: 50 * time.Millisecond})
	warm, _ := e.connect(t, "1", "2.0.0", "")
	warm.mustHeartbeat(t)
	trips, cmds = counter.Measure(func() {
		s, _ := e.connect(t, "2", "2.0.0", "")
		s.mustHeartbeat(t)
	})
	t.Logf("an SSE connect without a join: %d round trips, %d commands", trips, cmds)
	if trips > budgetNoJoin {
		t.Errorf("an SSE connect without a join took %d Redis round trips (%d commands), more than its budget of %d", trips, cmds, budgetNoJoin)
	}
}

// mustHeartbeat reads the stream's next event, which must be a heartbeat.
func (s *stream) mustHeartbeat(t *testing.T) {
	t.Helper()
	if ev := s.must(t); ev.Name != "heartbeat" {
		t.Fatalf("got %s, want a heartbeat", ev)
	}
}
