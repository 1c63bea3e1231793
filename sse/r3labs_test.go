package sse_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	r3 "github.com/r3labs/sse/v2"
	"go.uber.org/goleak"
	"gopkg.in/cenkalti/backoff.v1"
)

// r3sub is one r3labs/sse (v2.10.0) Client subscription, run the one way
// that was measured safe: SubscribeRawWithContext (SubscribeChan with
// Unsubscribe leaks a read loop each time), and a reconnect strategy bound
// to the context (the default backoff keeps retrying after the context is
// cancelled), so that cancelling it stops the client. Why the server side
// is not used: docs/proxies.md.
type r3sub struct {
	c      *r3.Client
	events chan *r3.Event
	done   chan error
	cancel context.CancelFunc
}

func subscribeR3(url string, setup func(c *r3.Client)) *r3sub {
	ctx, cancel := context.WithCancel(context.Background())
	c := r3.NewClient(url)
	// A transport of its own without keep-alive: the library's default
	// (http.DefaultTransport) would keep an idle connection, and its
	// goroutines, after the stream ends.
	c.Connection = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	c.ReconnectStrategy = backoff.WithContext(backoff.NewExponentialBackOff(), ctx)
	if setup != nil {
		setup(c)
	}
	s := &r3sub{c: c, events: make(chan *r3.Event, 1024), done: make(chan error, 1), cancel: cancel}
	go func() {
		s.done <- c.SubscribeRawWithContext(ctx, func(m *r3.Event) {
			select {
			case s.events <- m:
			case <-ctx.Done():
			}
		})
	}()
	return s
}

// next returns the next event the client handed over.
func (s *r3sub) next(t *testing.T) *r3.Event {
	t.Helper()
	select {
	case ev := <-s.events:
		return ev
	case err := <-s.done:
		t.Fatalf("the r3labs client stopped (%v) where an event was expected", err)
	case <-time.After(waitFor):
		t.Fatal("the r3labs client got no event")
	}
	return nil
}

// frames returns the data of the next n unnamed events, skipping heartbeats.
func (s *r3sub) frames(t *testing.T, n int) []*r3.Event {
	t.Helper()
	var out []*r3.Event
	for len(out) < n {
		ev := s.next(t)
		switch string(ev.Event) {
		case "heartbeat":
			continue
		case "":
			out = append(out, ev)
		default:
			t.Fatalf("want a frame, got event %q %q", ev.Event, ev.Data)
		}
	}
	return out
}

// expect reads the frames want in order, then requires a heartbeat next
// (nothing more pending).
func (s *r3sub) expect(t *testing.T, want ...string) []*r3.Event {
	t.Helper()
	got := s.frames(t, len(want))
	for i := range want {
		if !jsonEqual(string(got[i].Data), want[i]) {
			t.Fatalf("frame %d: want %s, got %s", i, want[i], got[i].Data)
		}
	}
	if ev := s.next(t); string(ev.Event) != "heartbeat" {
		t.Fatalf("want nothing more (a heartbeat), got event %q %q", ev.Event, ev.Data)
	}
	return got
}

// hello reads the retry: event and the session event.
func (s *r3sub) hello(t *testing.T) (hello, string) {
	t.Helper()
	ev := s.next(t)
	if len(ev.Retry) == 0 || len(ev.Data) != 0 {
		t.Fatalf("want the retry: line first, got %+v", ev)
	}
	ev = s.next(t)
	if string(ev.Event) != "session" || len(ev.ID) == 0 {
		t.Fatalf("want the session event with an id, got event %q id %q", ev.Event, ev.ID)
	}
	var h hello
	if err := json.Unmarshal(ev.Data, &h); err != nil || h.Session == "" || h.Post == "" {
		t.Fatalf("session event data: %q (%v)", ev.Data, err)
	}
	return h, string(ev.ID)
}

// stop cancels the subscription and waits for the client to return.
func (s *r3sub) stop(t *testing.T) {
	t.Helper()
	s.cancel()
	select {
	case <-s.done:
	case <-time.After(waitFor):
		t.Fatal("the r3labs client did not return after its context was cancelled")
	}
}

// lastID is what the client would send as Last-Event-ID.
func (s *r3sub) lastID() string {
	b, _ := s.c.LastEventID.Load().([]byte)
	return string(b)
}

// A Go client using r3labs/sse reads the stream, talks through POST, goes
// away, and a second client resumes from the first one's last event id: it
// gets exactly what was sent meanwhile, once, in order.
func TestR3labsClientStreamAndResume(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	e := newEnv(t, envConfig{Heartbeat: 200 * time.Millisecond})
	url := e.srv.URL + ssePath + "?" + streamQuery(t, "42", "2.0.0")

	c1 := subscribeR3(url, nil)
	h, helloID := c1.hello(t)
	if h.Resumed || h.Post != ssePath || len(h.Credential) != 64 || h.Credential[:32] != h.Session {
		t.Fatalf("session event: want a new session with post %s and a credential, got %+v", ssePath, h)
	}
	if got := c1.lastID(); got != helloID {
		t.Fatalf("client LastEventID after the session event: want %q, got %q", helloID, got)
	}

	e.send(t, h, `["1","1","room:a","phx_join",{"name":"alice"}]`)
	joined := c1.frames(t, 3)
	evs := make([]event, len(joined))
	for i, j := range joined {
		evs[i] = event{Data: string(j.Data), ID: string(j.ID), HasID: true, HasData: true}
	}
	requireJoined(t, evs, "room:a", "1", "42")
	e.broadcast(t, "room:a", 0)
	got := c1.expect(t, news("room:a", 0))
	last := string(got[0].ID)
	if c1.lastID() != last {
		t.Fatalf("client LastEventID: want the broadcast's id %q, got %q", last, c1.lastID())
	}
	c1.stop(t)
	waitHandlers(t, 0, handlerWait)

	// While no client is connected: broadcasts, a reply to a POST, and a
	// broadcast on a topic the session never joined.
	e.broadcast(t, "room:a", 1)
	e.send(t, h, ping("1", "2", "room:a"))
	e.broadcast(t, "room:b", 99)
	e.broadcast(t, "room:a", 2)

	c2 := subscribeR3(url, func(c *r3.Client) { c.Headers["Last-Event-ID"] = last })
	h2, helloID2 := c2.hello(t)
	if !h2.Resumed || h2.Session != h.Session || h2.Post != h.Post {
		t.Fatalf("resume: want session %s resumed, got %+v", h.Session, h2)
	}
	if helloID2 != last {
		t.Fatalf("resume: the session event's id: want the resume point %q, got %q", last, helloID2)
	}
	c2.expect(t, news("room:a", 1), pingReply("1", "2", "room:a"), news("room:a", 2))
	// Live again.
	e.broadcast(t, "room:a", 3)
	c2.expect(t, news("room:a", 3))
	c2.stop(t)

	// A third client resuming from the same id (the library's own
	// LastEventID this time) gets the same frames again: the id is a
	// position, not a one-shot ticket.
	c3 := subscribeR3(url, func(c *r3.Client) { c.LastEventID.Store([]byte(last)) })
	if h3, _ := c3.hello(t); !h3.Resumed || h3.Session != h.Session {
		t.Fatalf("second resume from %q: want session %s resumed, got %+v", last, h.Session, h3)
	}
	c3.expect(t, news("room:a", 1), pingReply("1", "2", "room:a"), news("room:a", 2), news("room:a", 3))
	c3.stop(t)

	waitHandlers(t, 0, handlerWait)
	e.srv.Close()
	goleak.VerifyNone(t, ignore)
}
