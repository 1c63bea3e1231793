package sse_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"
)

// Resuming from any event id, through the header or either query
// parameter, delivers exactly the frames after that event, in order, with
// frames from the session's mailbox and from two channels interleaved.
func TestResumeFromEveryEventID(t *testing.T) {
	e := newEnv(t, envConfig{Heartbeat: 50 * time.Millisecond})
	s, h := e.connect(t, "42", "2.0.0", "join=room:r")
	all := s.frames(t, 3)
	requireJoined(t, all, "room:r", "join:1", "42")
	ids := []string{h.EventID}
	for _, ev := range all {
		ids = append(ids, ev.ID)
	}
	want := []string{all[0].Data, all[1].Data, all[2].Data}

	// Publish from one source after another, each frame received before
	// the next is published, so that the live order is the order made.
	step := func(publish func(), frame string) {
		t.Helper()
		publish()
		got := s.frames(t, 1)
		requireFrame(t, got[0].Data, frame)
		all = append(all, got[0])
		ids = append(ids, got[0].ID)
		want = append(want, frame)
	}
	step(func() { e.broadcast(t, "room:r", 1) }, news("room:r", 1))
	step(func() { e.send(t, h, ping("join:1", "p1", "room:r")) }, pingReply("join:1", "p1", "room:r"))

	// A join while no stream is open (its frames come from the mailbox and
	// the topic, and a live stream could read them between publications).
	s.close()
	e.send(t, h, `["2","2","room:s","phx_join",{}]`)
	s = e.resume(t, "42", "2.0.0", ids[len(ids)-1], h.Session)
	joinS := s.frames(t, 3)
	requireJoined(t, joinS, "room:s", "2", "42")
	for _, ev := range joinS {
		all = append(all, ev)
		ids = append(ids, ev.ID)
		want = append(want, ev.Data)
	}

	step(func() { e.broadcast(t, "room:s", 2) }, news("room:s", 2))
	step(func() { e.broadcast(t, "room:r", 3) }, news("room:r", 3))
	step(func() { e.send(t, h, `[null,"h1","phoenix","heartbeat",{}]`) }, `[null,"h1","phoenix","phx_reply",{"response":{},"status":"ok"}]`)
	step(func() { e.broadcast(t, "room:s", 4) }, news("room:s", 4))
	step(func() { e.send(t, h, ping("2", "p2", "room:s")) }, pingReply("2", "p2", "room:s"))
	s.quiet(t)
	if len(ids) != len(want)+1 || len(all) != len(want) {
		t.Fatalf("bookkeeping: %d ids for %d frames", len(ids), len(want))
	}
	for i := 1; i < len(ids); i++ {
		if ids[i] == ids[i-1] {
			t.Fatalf("frames %d and %d share the id %q: resuming from it cannot be exact", i-1, i, ids[i])
		}
	}
	s.close()

	for i, id := range ids {
		how := []string{"header", "lastEventId", "last_event_id"}[i%3]
		t.Run(fmt.Sprintf("after %d frames, by %s", i, how), func(t *testing.T) {
			q := streamQuery(t, "42", "2.0.0")
			var hdr map[string]string
			switch how {
			case "header":
				hdr = map[string]string{"Last-Event-ID": id}
			default:
				q += "&" + how + "=" + qe(id)
			}
			rs := e.open(t, q, hdr)
			rh := rs.session(t)
			if !rh.Resumed || rh.Session != h.Session || rh.EventID != id {
				t.Fatalf("want session %s resumed at %q, got %+v", h.Session, id, rh)
			}
			resumed := rs.expect(t, want[i:]...)
			// The ids of a resumed stream resume as exactly.
			if len(resumed) > 1 {
				mid := len(resumed) / 2
				rs.close()
				again := e.resume(t, "42", "2.0.0", resumed[mid-1].ID, h.Session)
				again.expect(t, want[i+mid:]...)
			}
		})
	}

	// The header wins over a query parameter.
	rs := e.open(t, streamQuery(t, "42", "2.0.0")+"&lastEventId="+qe(ids[1]), map[string]string{"Last-Event-ID": ids[len(ids)-2]})
	if rh := rs.session(t); rh.EventID != ids[len(ids)-2] {
		t.Fatalf("Last-Event-ID header and lastEventId: want the header's %q to count, got %+v", ids[len(ids)-2], rh)
	}
	rs.expect(t, want[len(want)-1])
}

// A stream resumed from an id of a session that is gone (ended or expired)
// opens a new session and says so; join= applies to it.
func TestResumeOfGoneSession(t *testing.T) {
	e := newEnv(t, envConfig{})
	s, h := e.connect(t, "42", "2.0.0", "join=room:g")
	joined := s.frames(t, 3)
	requireJoined(t, joined, "room:g", "join:1", "42")
	last := joined[2].ID

	// The session ends while its stream is open: the stream says so and ends.
	if n, err := e.gw.Disconnect(context.Background(), "user_socket:42"); err != nil || n != 1 {
		t.Fatalf("Disconnect: want 1 session ended, got %d, %v", n, err)
	}
	evs := s.waitEnd(t, waitFor)
	if len(evs) == 0 || evs[len(evs)-1].Name != "session_gone" {
		t.Fatalf("want a session_gone event before the stream ends, got %v", evs)
	}
	if s.endErr != nil {
		t.Fatalf("the stream ended uncleanly: %v", s.endErr)
	}
	requireJSONError(t, "POST to the ended session", e.post(t, h, "application/json", ping("join:1", "9", "room:g")), http.StatusGone)

	s2 := e.open(t, streamQuery(t, "42", "2.0.0")+"&join=room:g", map[string]string{"Last-Event-ID": last})
	h2 := s2.session(t)
	if h2.Resumed || h2.Session == h.Session || h2.Credential == h.Credential {
		t.Fatalf("resume of a gone session: want a new session with resumed:false, got %+v (old %s)", h2, h.Session)
	}
	requireJoined(t, s2.frames(t, 3), "room:g", "join:1", "42")
	e.send(t, h2, ping("join:1", "1", "room:g"))
	s2.expect(t, pingReply("join:1", "1", "room:g"))
}

// bufferingProxy is a reverse proxy that, like nginx with proxy_buffering
// on and a CDN that holds responses, reads the upstream answer to its end
// before it sends anything to the client.
func bufferingProxy(t *testing.T, upstream string) *httptest.Server {
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	p := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, err := http.NewRequestWithContext(r.Context(), r.Method, upstream+r.URL.RequestURI(), r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		req.Header = r.Header.Clone()
		resp, err := hc.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			// An upstream that does not end its response cleanly: what
			// the proxy got is lost.
			http.Error(w, "upstream: "+err.Error(), http.StatusBadGateway)
			return
		}
		for k, vs := range resp.Header {
			w.Header()[k] = vs
		}
		w.WriteHeader(resp.StatusCode)
		_, _ = w.Write(body)
	}))
	t.Cleanup(p.Close)
	return p
}

// Behind a proxy that buffers whole responses, a short MaxLifetime still
// gets every message to the client: each stream ends, the proxy lets it
// through, the client resumes from its last id. Over several cycles every
// message arrives exactly once, in order.
func TestBufferingProxy(t *testing.T) {
	const lifetime = 500 * time.Millisecond
	e := newEnv(t, envConfig{MaxLifetime: lifetime, Heartbeat: 200 * time.Millisecond})
	proxy := bufferingProxy(t, e.srv.URL)
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

	// cycle opens one stream through the proxy, waits for the proxy to
	// hand over the whole response, and parses it.
	cycle := func(t *testing.T, query string, hdr map[string]string) (hello, []event, time.Duration) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, proxy.URL+ssePath+"?"+query, nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		start := time.Now()
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("GET through the proxy: %v", err)
		}
		waited := time.Since(start)
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(resp.Body)
			t.Fatalf("GET through the proxy: want 200, got %d %q", resp.StatusCode, b)
		}
		var evs []event
		if err := parseEvents(resp.Body, func(ev event) bool { evs = append(evs, ev); return true }); err != nil {
			t.Fatalf("parsing the proxied stream: %v", err)
		}
		i := 0
		if i < len(evs) && evs[i].Retry != "" {
			i++
		}
		if i >= len(evs) || evs[i].Name != "session" {
			t.Fatalf("proxied stream: want retry: then the session event, got %v", evs)
		}
		var h hello
		if err := json.Unmarshal([]byte(evs[i].Data), &h); err != nil {
			t.Fatal(err)
		}
		h.EventID = evs[i].ID
		var frames []event
		for _, ev := range evs[i+1:] {
			switch {
			case ev.Name == "heartbeat":
			case ev.Retry == "100" && !ev.HasData: // the clean end's "resume at once"
			case ev.isFrame() && ev.HasID:
				frames = append(frames, ev)
			default:
				t.Fatalf("proxied stream: unexpected event %s", ev)
			}
		}
		return h, frames, waited
	}

	query := streamQuery(t, "42", "2.0.0")
	h, frames, waited := cycle(t, query+"&join=room:p", nil)
	if waited < lifetime*8/10 {
		t.Fatalf("the proxy answered after %v: it does not buffer, the test proves nothing", waited)
	}
	if h.Resumed {
		t.Fatalf("first stream: want a new session, got %+v", h)
	}
	requireJoined(t, frames, "room:p", "join:1", "42")
	last := frames[len(frames)-1].ID

	// Publish steadily, across stream ends and reconnects.
	var (
		mu        sync.Mutex
		published int
		pubErr    error
	)
	stop := make(chan struct{})
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		tick := time.NewTicker(40 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			mu.Lock()
			err := e.gw.Broadcast(context.Background(), "room:p", "news", map[string]int{"n": published})
			if err == nil {
				published++
			} else {
				pubErr = err
			}
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	stopPublishing := sync.OnceFunc(func() { close(stop); <-pubDone })
	defer stopPublishing()

	var got []int
	for c := 1; c <= 12; c++ {
		if c == 4 {
			stopPublishing()
			mu.Lock()
			if pubErr != nil {
				t.Fatalf("Broadcast: %v", pubErr)
			}
			mu.Unlock()
		}
		hr, frames, _ := cycle(t, query+"&join=room:p", map[string]string{"Last-Event-ID": last})
		if !hr.Resumed || hr.Session != h.Session || hr.EventID != last {
			t.Fatalf("cycle %d: want session %s resumed at %q, got %+v", c, h.Session, last, hr)
		}
		for _, f := range frames {
			fr := decodeV2(t, f.Data)
			var p struct{ N int }
			if fr.Topic != "room:p" || fr.Event != "news" || json.Unmarshal(fr.Payload, &p) != nil {
				t.Fatalf("cycle %d: unexpected frame %s", c, f.Data)
			}
			got = append(got, p.N)
			last = f.ID
		}
		mu.Lock()
		n := published
		mu.Unlock()
		if c >= 4 && len(got) >= n {
			// One more cycle: nothing may come twice.
			_, extra, _ := cycle(t, query, map[string]string{"Last-Event-ID": last})
			if len(extra) != 0 {
				t.Fatalf("after every message arrived, another stream brought %s", dataOf(extra))
			}
			break
		}
	}
	mu.Lock()
	n := published
	mu.Unlock()
	want := make([]int, n)
	for i := range want {
		want[i] = i
	}
	if n < 10 {
		t.Fatalf("only %d messages published: the test proves little", n)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("through the buffering proxy: want every message 0..%d once, in order; got %v", n-1, got)
	}
}
