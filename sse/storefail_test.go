package sse_test

import (
	"testing"
	"time"

	"github.com/sluicegw/sluice/internal/testroom"
)

// A store that fails for a while (slow, not down) never ends a stream: the
// stream waits, still sending heartbeats, and once the store answers it
// delivers every message published meanwhile, in order, exactly once.
// Parked streams and streams with a goroutine of their own alike.
func TestSlowStoreKeepsStream(t *testing.T) {
	for _, noPark := range []bool{false, true} {
		name := "parked"
		if noPark {
			name = "goroutine"
		}
		t.Run(name, func(t *testing.T) {
			var fb *testroom.FlakyBroker
			e := newEnv(t, envConfig{
				SessionTimeout: time.Minute, // the failures stay well within it
				NoPark:         noPark,
				WrapBroker:     testroom.WrapFlaky(&fb),
			})
			s, _ := e.connect(t, "42", "2.0.0", "join=room:a")
			requireJoined(t, s.frames(t, 3), "room:a", "join:1", "42")
			s.quiet(t)

			fb.SetDown(true)
			for n := 1; n <= 10; n++ {
				e.broadcast(t, "room:a", n)
			}
			// Several failed tries: the wake-up's, and retries after it.
			fb.WaitFailures(t, 4, waitFor)
			// Still open, and saying so: a heartbeat, nothing else (an
			// unavailable event or the end would fail here).
			waitHeartbeat(t, s)

			fb.SetDown(false)
			want := make([]string, 10)
			for n := range want {
				want[n] = news("room:a", n+1)
			}
			s.expect(t, want...)
		})
	}
}

// A store that fails every call for longer than the session timeout ends
// the stream, saying why, so that the client reconnects (perhaps to
// another instance).
func TestStoreDownEndsStreamAfterSessionTimeout(t *testing.T) {
	var fb *testroom.FlakyBroker
	e := newEnv(t, envConfig{
		SessionTimeout: 400 * time.Millisecond,
		WrapBroker:     testroom.WrapFlaky(&fb),
	})
	s, _ := e.connect(t, "42", "2.0.0", "join=room:a")
	requireJoined(t, s.frames(t, 3), "room:a", "join:1", "42")
	fb.SetDown(true)
	e.broadcast(t, "room:a", 1)
	for {
		ev, ended := s.next(t, waitFor)
		if ended {
			t.Fatalf("the stream ended (err %v) without saying why", s.endErr)
		}
		if ev.Name == "heartbeat" {
			continue
		}
		if ev.Name != "unavailable" {
			t.Fatalf("want an unavailable event, got %s", ev)
		}
		break
	}
	if _, ended := s.next(t, waitFor); !ended {
		t.Fatal("the stream went on after its unavailable event")
	}
}

// waitHeartbeat reads events until a heartbeat and fails on anything else.
func waitHeartbeat(t *testing.T, s *stream) {
	t.Helper()
	ev := s.must(t)
	if ev.Name != "heartbeat" {
		t.Fatalf("want a heartbeat while the store fails, got %s", ev)
	}
}
