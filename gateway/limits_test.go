package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestPayloadLimitRefusesTheWholeBatch(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxPayloadBytes = 32 })
	a := h.connect("1", "2.0.0")
	big := `["1","2","room:a","ping",{"x":"` + strings.Repeat("a", 40) + `"}]`
	err := h.gw.Handle(context.Background(), a.tok.SessionID, [][]byte{[]byte(`["1","1","room:a","phx_join",{}]`), []byte(big)})
	var be *BatchError
	if !errors.Is(err, ErrPayloadTooLarge) || !errors.As(err, &be) || be.Index != 1 {
		t.Fatalf("Handle = %v, want a BatchError at frame 2 wrapping ErrPayloadTooLarge", err)
	}
	expectFrames(t, a.poll()) // the join was not applied either
	a.send(`["1","1","room:a","phx_join",{}]`)
	if got := a.poll(); len(got) == 0 || !strings.Contains(got[0], `"joined":"room:a"`) {
		t.Fatalf("session unusable after a refused batch: %v", got)
	}
}

func TestSessionsPerUserLimit(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxSessionsPerUser = 2 })
	ctx := context.Background()
	first := h.connect("1", "2.0.0")
	h.connect("1", "2.0.0")
	if _, err := h.gw.Connect(ctx, ConnectInfo{Token: "1", Vsn: "2.0.0"}); !errors.Is(err, ErrTooManySessions) {
		t.Fatalf("third session: %v, want ErrTooManySessions", err)
	}
	h.connect("2", "2.0.0") // other users are not affected
	if _, err := h.gw.endSession(ctx, first.tok.SessionID, "disconnected"); err != nil {
		t.Fatal(err)
	}
	h.connect("1", "2.0.0") // a slot freed
}

func TestPostRateLimit(t *testing.T) {
	// One token per ~17 minutes: however slow the machine, no token comes
	// back during the test (the refill is TestPostLimiterRefills's, on a
	// clock of its own).
	h := newHarness(t, func(c *Config) { c.PostRate, c.PostBurst = 0.001, 3 })
	a := h.connect("1", "2.0.0")
	b := h.connect("2", "2.0.0")
	ping := [][]byte{[]byte(`[null,"1","phoenix","heartbeat",{}]`)}
	for i := range 3 {
		if err := h.gw.Handle(context.Background(), a.tok.SessionID, ping); err != nil {
			t.Fatalf("request %d within the burst: %v", i+1, err)
		}
	}
	if err := h.gw.Handle(context.Background(), a.tok.SessionID, ping); !errors.Is(err, ErrRateLimited) {
		t.Fatalf("request over the burst: %v, want ErrRateLimited", err)
	}
	if err := h.gw.Handle(context.Background(), b.tok.SessionID, ping); err != nil {
		t.Fatalf("another session was limited: %v", err)
	}
}

// TestRateLimitedBatchWaitsForNoLock: a session over its rate is refused
// at once, even while another request holds its lock (before, it queued
// for the lock and then failed on it: a flood held up the session's own
// requests).
func TestRateLimitedBatchWaitsForNoLock(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.PostRate, c.PostBurst = 0.001, 1 })
	a := h.connect("1", "2.0.0")
	ping := [][]byte{[]byte(`[null,"1","phoenix","heartbeat",{}]`)}
	if err := h.gw.Handle(context.Background(), a.tok.SessionID, ping); err != nil {
		t.Fatalf("request within the burst: %v", err)
	}
	unlock, err := h.store.Lock(context.Background(), a.tok.SessionID)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if err := h.gw.Handle(context.Background(), a.tok.SessionID, ping); !errors.Is(err, ErrRateLimited) {
		t.Fatalf("request over the rate while the lock is held: %v, want ErrRateLimited", err)
	}
}

// TestPostLimiterRefills: a spent bucket gives a token back after 1/rate,
// on the limiter's own clock.
func TestPostLimiterRefills(t *testing.T) {
	p := newPostLimiter(20, 1)
	t0 := time.Now()
	if !p.allow("s", t0) {
		t.Fatal("the first request must pass")
	}
	if p.allow("s", t0.Add(10*time.Millisecond)) {
		t.Fatal("a request over the burst must be refused")
	}
	if !p.allow("s", t0.Add(60*time.Millisecond)) {
		t.Fatal("after 1/rate a token must be back")
	}
}

// TestOriginChecker checks each pattern form against Phoenix's check_origin
// (Phoenix.Socket.Transport and its tests): a scheme without a port means
// that scheme's default port, not any port.
func TestOriginChecker(t *testing.T) {
	for _, tc := range []struct {
		pattern string
		allowed []string
		refused []string
	}{
		{
			pattern: "//example.com", // any scheme, any port
			allowed: []string{"https://example.com", "http://example.com", "http://example.com:8080", "https://EXAMPLE.com/"},
			refused: []string{"https://a.example.com", "https://evil-example.com", "https://example.com.evil.io", "https://evilexample.com"},
		},
		{
			pattern: "//example.com:8443", // any scheme, that port
			allowed: []string{"https://example.com:8443", "http://example.com:8443"},
			refused: []string{"https://example.com", "http://example.com", "https://example.com:443"},
		},
		{
			pattern: "//example.com:443", // matches https's default port
			allowed: []string{"https://example.com", "https://example.com:443"},
			refused: []string{"http://example.com", "https://example.com:8443"},
		},
		{
			pattern: "https://app.example.com", // https on 443 only
			allowed: []string{"https://app.example.com", "https://app.example.com:443"},
			refused: []string{"https://app.example.com:8443", "http://app.example.com", "http://app.example.com:443", "https://x.app.example.com"},
		},
		{
			pattern: "http://scheme.com", // http on 80 only (Phoenix's own test)
			allowed: []string{"http://scheme.com", "http://scheme.com:80/"},
			refused: []string{"https://scheme.com", "http://scheme.com:8080"},
		},
		{
			pattern: "https://*.foo.com", // the domain and its subdomains, https on 443
			allowed: []string{"https://foo.com", "https://a.foo.com", "https://a.b.foo.com"},
			refused: []string{"http://a.foo.com", "https://a.foo.com:8443", "https://evilfoo.com", "https://foo.com.evil.io"},
		},
		{
			pattern: "https://*.foo.com:8443", // explicit port
			allowed: []string{"https://a.foo.com:8443", "https://foo.com:8443"},
			refused: []string{"https://a.foo.com", "http://a.foo.com:8443"},
		},
		{
			pattern: "http://localhost:4000", // explicit port
			allowed: []string{"http://localhost:4000"},
			refused: []string{"http://localhost:4001", "http://localhost", "https://localhost:4000"},
		},
	} {
		c, err := NewOriginChecker([]string{tc.pattern})
		if err != nil {
			t.Fatalf("%s: %v", tc.pattern, err)
		}
		if !c.Allowed("") {
			t.Errorf("%s: a request without an Origin (curl, servers) must not be checked", tc.pattern)
		}
		for _, o := range []string{"null", "file://", "not a url", "https://"} {
			if c.Allowed(o) {
				t.Errorf("%s: Allowed(%q) = true, want false: an origin without a host", tc.pattern, o)
			}
		}
		for _, o := range tc.allowed {
			if !c.Allowed(o) {
				t.Errorf("pattern %s: Allowed(%q) = false, want true", tc.pattern, o)
			}
		}
		for _, o := range tc.refused {
			if c.Allowed(o) {
				t.Errorf("pattern %s: Allowed(%q) = true, want false", tc.pattern, o)
			}
		}
	}
	// A list allows what any of its patterns allows.
	c, err := NewOriginChecker([]string{" //example.com", "https://*.foo.com:443 ", "http://localhost:4000"})
	if err != nil {
		t.Fatal(err)
	}
	for origin, want := range map[string]bool{
		"http://example.com:8080": true,
		"https://a.foo.com":       true,
		"http://localhost:4000":   true,
		"http://localhost:4001":   false,
		"https://a.foo.com:8443":  false,
	} {
		if got := c.Allowed(origin); got != want {
			t.Errorf("list: Allowed(%q) = %v, want %v", origin, got, want)
		}
	}
	for _, patterns := range [][]string{{""}, {"*"}, {"https://x.test", "*"}, nil} {
		all, err := NewOriginChecker(patterns)
		if err != nil || !all.Allowed("https://anything.example:1234") {
			t.Errorf("%q must allow every origin (err %v)", patterns, err)
		}
	}
	for _, bad := range []string{"not a url", "https://", "//", "//:443"} {
		if _, err := NewOriginChecker([]string{bad}); err == nil {
			t.Errorf("the malformed pattern %q was accepted", bad)
		}
	}
}

// A ref, join_ref, topic or event over MaxFieldBytes refuses the batch whole,
// naming the field; nothing of it is applied and the session goes on.
func TestLongFieldRefusesTheWholeBatch(t *testing.T) {
	h := newHarness(t, nil)
	a := h.connect("1", "2.0.0")
	long := strings.Repeat("x", 300)
	for field, frame := range map[string]string{
		"ref":      `["1","` + long + `","room:a","ping",{}]`,
		"join_ref": `["` + long + `","2","room:a","ping",{}]`,
		"topic":    `["1","2","` + long + `","ping",{}]`,
		"event":    `["1","2","room:a","` + long + `",{}]`,
	} {
		err := h.gw.Handle(context.Background(), a.tok.SessionID, [][]byte{[]byte(`["1","1","room:a","phx_join",{}]`), []byte(frame)})
		var be *BatchError
		if !errors.Is(err, ErrFieldTooLong) || !errors.As(err, &be) || be.Index != 1 || !strings.Contains(err.Error(), field+" is 300 bytes, the limit is 255") {
			t.Fatalf("a 300-byte %s: Handle = %v, want a BatchError at frame 2 wrapping ErrFieldTooLong that names the field", field, err)
		}
	}
	expectFrames(t, a.poll()) // the joins were not applied either
	a.send(`["1","1","room:a","phx_join",{}]`)
	if got := a.poll(); len(got) == 0 || !strings.Contains(got[0], `"joined":"room:a"`) {
		t.Fatalf("session unusable after refused batches: %v", got)
	}
}

// With --post-rate, limiter state exists only for live sessions: before,
// Handle made a bucket for any session id it was given, before looking the
// session up, so unauthenticated POSTs with made-up (or 1 MiB) ids pinned
// memory.
func TestRateLimiterKeepsNoStateForUnknownSessions(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.PostRate, c.PostBurst = 20, 3 })
	ping := [][]byte{[]byte(`[null,"1","phoenix","heartbeat",{}]`)}
	huge := strings.Repeat("a", 1<<20)
	for i := range 300 {
		var id string
		switch i % 3 {
		case 0:
			id = newSessionID() // the right shape, no such session
		case 1:
			id = huge[:len(huge)-i]
		default:
			id = fmt.Sprintf("not a session %d", i)
		}
		if err := h.gw.Handle(context.Background(), id, ping); !errors.Is(err, ErrNoSession) {
			t.Fatalf("Handle with a made-up session id: %v, want ErrNoSession", err)
		}
	}
	if n := h.gw.limiter.size(); n != 0 {
		t.Fatalf("the limiter keeps state for %d sessions after POSTs to none, want 0", n)
	}
	a := h.connect("1", "2.0.0")
	a.send(`[null,"1","phoenix","heartbeat",{}]`)
	if n := h.gw.limiter.size(); n != 1 {
		t.Fatalf("the limiter keeps state for %d sessions, want 1 (the live one)", n)
	}
	if _, err := h.gw.endSession(context.Background(), a.tok.SessionID, "disconnected"); err != nil {
		t.Fatal(err)
	}
	if n := h.gw.limiter.size(); n != 0 {
		t.Fatalf("the limiter keeps state for %d sessions after the only one ended, want 0", n)
	}
}

// lockedBuffer is a log destination safe for concurrent writes.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// What a session keeps is bounded in bytes whatever its client sends: its
// JSON (what Redis stores and reads on every request) stays under
// sessionBound after a flood of the largest batches allowed, and oversized
// fields are refused. Before, refs of any size were kept (300 of them) and
// echoed, and unmatched topics were logged whole.
func TestHostileBatchesKeepTheSessionSmall(t *testing.T) {
	logs := &lockedBuffer{}
	h := newHarness(t, func(c *Config) {
		c.Logger = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	a := h.connect("1", "2.0.0")
	ctx := context.Background()
	max := func(prefix string, n int) string {
		return fmt.Sprintf("%s%0*d", prefix, MaxFieldBytes-len(prefix), n)
	}
	// Every channel the session may join, with the longest topic and join_ref.
	for i := range h.gw.cfg.MaxChannels {
		a.send(fmt.Sprintf(`[%q,%q,%q,"phx_join",{}]`, max("j", i), max("r", i), max("room:", i)))
	}
	// Then batches of 100 of the largest frames: unmatched topics (replied
	// to, and joins of them logged), heartbeats, each with its own ref.
	unmatched := max("nowhere:", 0)
	var last [][]byte
	for b := range 20 {
		frames := make([][]byte, 100)
		last = frames
		for i := range frames {
			ref := max("ref", b*100+i)
			switch i % 3 {
			case 0:
				frames[i] = fmt.Appendf(nil, `[%q,%q,%q,%q,{}]`, max("j", i), ref, unmatched, max("event", i))
			case 1:
				frames[i] = fmt.Appendf(nil, `[%q,%q,%q,"phx_join",{}]`, max("j", i), ref, unmatched)
			default:
				frames[i] = fmt.Appendf(nil, `[null,%q,"phoenix","heartbeat",{}]`, ref)
			}
		}
		if err := h.gw.Handle(ctx, a.tok.SessionID, frames); err != nil {
			t.Fatalf("batch %d: %v", b, err)
		}
	}
	// And larger fields, which must be refused.
	for b := range 5 {
		frames := make([][]byte, 100)
		for i := range frames {
			frames[i] = fmt.Appendf(nil, `[null,%q,"phoenix","heartbeat",{}]`, strings.Repeat("R", 10<<10)+fmt.Sprint(b*100+i))
		}
		if err := h.gw.Handle(ctx, a.tok.SessionID, frames); !errors.Is(err, ErrFieldTooLong) {
			t.Errorf("batch of 10 KiB refs: Handle = %v, want ErrFieldTooLong", err)
		}
	}

	s, err := h.store.Load(ctx, a.tok.SessionID)
	if err != nil {
		t.Fatal(err)
	}
	stored, _ := json.Marshal(s)
	refs, _ := json.Marshal(s.RecentRefs)
	// The bound, for plain-text fields: the refs' budget, each channel's
	// topic (twice: key and field) and join_ref with its other fields, and
	// the rest of the session.
	sessionBound := maxRecentRefsBytes + h.gw.cfg.MaxChannels*(3*MaxFieldBytes+128) + 1024
	if len(refs) > maxRecentRefsBytes {
		t.Errorf("the session's refs take %d bytes of JSON, over the budget of %d", len(refs), maxRecentRefsBytes)
	}
	if len(stored) > sessionBound {
		t.Errorf("the session takes %d bytes of JSON, over the bound of %d", len(stored), sessionBound)
	}
	if len(s.Outbox) != 0 {
		t.Errorf("the session still holds %d records to publish", len(s.Outbox))
	}
	// The most recent batch's refs are all still known: its retry is
	// recognized whole.
	a.poll()
	if err := h.gw.Handle(ctx, a.tok.SessionID, last); err != nil {
		t.Fatal(err)
	}
	expectFrames(t, a.poll()) // all duplicates: nothing is replied
	a.send(`[null,"ok","phoenix","heartbeat",{}]`)
	expectFrames(t, a.poll(), `[null,"ok","phoenix","phx_reply",{"response":{},"status":"ok"}]`)

	out := logs.String()
	if !strings.Contains(out, "join of unmatched topic") {
		t.Fatal("no log of the joins of an unmatched topic")
	}
	if strings.Contains(out, unmatched) {
		t.Error("an unmatched topic was logged whole")
	}
	for line := range strings.Lines(out) {
		if len(line) > 1024 {
			t.Fatalf("a log line of %d bytes: %.300s...", len(line), line)
		}
	}
}

// jsonStringSize is what the refs' budget is counted in: it must agree with
// encoding/json, escapes included.
func TestJSONStringSize(t *testing.T) {
	for _, s := range []string{"", "sala:lobby\x00123", `"\`, "<a&b>", "\n\r\t\b\f\x01\x1f\x7f", "ñandú 🌵", "\xff\xfe", "a\u2028b\u2029", strings.Repeat("é", 300), "\xe2\x82"} {
		b, _ := json.Marshal(s)
		if got := jsonStringSize(s); got != len(b) {
			t.Errorf("jsonStringSize(%q) = %d, json.Marshal makes %d bytes (%s)", s, got, len(b), b)
		}
	}
}
