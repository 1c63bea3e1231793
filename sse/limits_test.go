package sse_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Over --max-streams a stream is not refused with an error status (an
// EventSource would give up for good): it is a 200 stream that says why and
// asks to retry soon, so the balancer can send it elsewhere.
func TestMaxStreamsTellsTheExtraStreamToRetry(t *testing.T) {
	e := newEnv(t, envConfig{MaxStreams: 1})
	first, _ := e.connect(t, "42", "2.0.0", "")
	extra := e.open(t, streamQuery(t, "43", "2.0.0"), nil)
	evs := extra.waitEnd(t, 2*time.Second)
	if len(evs) < 2 || evs[0].Retry == "" || evs[1].Name != "unavailable" || !strings.Contains(evs[1].Data, "maximum of streams") {
		t.Fatalf("extra stream: want retry: then an unavailable event saying the instance is full, and the end, got %v", evs)
	}
	// Once the first stream closes, a slot is free again.
	first.close()
	deadline := time.Now().Add(2 * time.Second)
	for {
		s := e.open(t, streamQuery(t, "43", "2.0.0"), nil)
		ev := s.must(t)
		for ev.Retry != "" && ev.Name == "" && !ev.HasData {
			ev = s.must(t)
		}
		s.close()
		if ev.Name == "session" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the first stream closed, a new one still got %s", ev)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A draining instance tells a new stream so, and to retry (elsewhere).
func TestDrainingTellsNewStreamsToRetryElsewhere(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.gw.Drain()
	s := e.open(t, streamQuery(t, "42", "2.0.0"), nil)
	evs := s.waitEnd(t, 2*time.Second)
	if len(evs) < 2 || evs[0].Retry == "" || evs[1].Name != "unavailable" || !strings.Contains(evs[1].Data, "shutting down") {
		t.Fatalf("stream to a draining instance: want retry: then an unavailable event saying it shuts down, got %v", evs)
	}
}

// An open stream keeps its session alive however long its heartbeat is
// compared with the session timeout: a stream that waits is not a client
// that left.
func TestOpenStreamKeepsItsSession(t *testing.T) {
	e := newEnv(t, envConfig{SessionTimeout: 200 * time.Millisecond, Heartbeat: time.Second})
	s, _ := e.connect(t, "42", "2.0.0", "join=room:k")
	requireJoined(t, s.frames(t, 3), "room:k", "join:1", "42")
	time.Sleep(700 * time.Millisecond)
	if n, err := e.gw.ExpireSessions(context.Background()); err != nil || n != 0 {
		t.Fatalf("a session with an open stream expired: %d, %v", n, err)
	}
	e.broadcast(t, "room:k", 1)
	s.expect(t, news("room:k", 1))
}

// Refs, join_refs, topics and events are echoed into replies and kept in
// the session: a POST with one over 255 bytes is refused whole (400, with
// an error naming the field), and the session goes on.
func TestLongFieldsAreRefused(t *testing.T) {
	e := newEnv(t, envConfig{})
	s, h := e.connect(t, "42", "2.0.0", "join=room:a")
	requireJoined(t, s.frames(t, 3), "room:a", "join:1", "42")
	long := strings.Repeat("x", 300)
	for field, frame := range map[string]string{
		"ref":      `["join:1","` + long + `","room:a","ping",{}]`,
		"join_ref": `["` + long + `","1","room:a","ping",{}]`,
		"topic":    `["join:1","1","` + long + `","ping",{}]`,
		"event":    `["join:1","1","room:a","` + long + `",{}]`,
	} {
		r := e.post(t, h, "application/x-ndjson", ping("join:1", "a1", "room:a")+"\n"+frame)
		requireJSONError(t, "POST with a 300-byte "+field, r, http.StatusBadRequest)
		if want := field + " is 300 bytes, the limit is 255"; !strings.Contains(r.Error, want) || !strings.Contains(r.Error, "nothing was applied") {
			t.Fatalf("a 300-byte %s: want an error saying %q and that nothing was applied, got %s", field, want, r.Body)
		}
	}
	e.send(t, h, ping("join:1", "b1", "room:a"))
	s.expect(t, pingReply("join:1", "b1", "room:a")) // not the refused batches' pings
}
