package web

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/labstack/echo/v4"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// newEcho returns an echo with everything this package serves; st is the
// self-test behind SelfTestPrefix.
func newEcho(cfg SelfTestConfig) (*echo.Echo, *selfTest) {
	e := echo.New()
	Register(e)
	RegisterConsole(e)
	st := newSelfTest(cfg)
	st.register(e, SelfTestPrefix)
	return e, st
}

// do runs one request through e in process.
func do(e *echo.Echo, method, target string, header map[string]string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, target, nil)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	e.ServeHTTP(rec, req)
	return rec
}

func TestAssetsContentTypesAndCaching(t *testing.T) {
	e, _ := newEcho(SelfTestConfig{})
	for _, tc := range []struct {
		path, contentType, cache string
		body                     []byte
		cors                     bool
	}{
		{SSETransportPath, "text/javascript; charset=utf-8", "public, max-age=300", sseTransport, true},
		{PhoenixPath, "text/javascript; charset=utf-8", "public, max-age=300", phoenixJS, true},
		{ConsolePath, "text/html; charset=utf-8", "no-cache", consoleHTML, false},
		{ConsoleScriptPath, "text/javascript; charset=utf-8", "no-cache", consoleJS, false},
		{ConsoleStylePath, "text/css; charset=utf-8", "no-cache", consoleCSS, false},
	} {
		t.Run(tc.path, func(t *testing.T) {
			rec := do(e, http.MethodGet, tc.path, nil)
			if rec.Code != http.StatusOK {
				t.Fatalf("GET %s: %d", tc.path, rec.Code)
			}
			h := rec.Header()
			if got := h.Get("Content-Type"); got != tc.contentType {
				t.Errorf("Content-Type %q, want %q", got, tc.contentType)
			}
			if got := h.Get("Cache-Control"); got != tc.cache {
				t.Errorf("Cache-Control %q, want %q", got, tc.cache)
			}
			if got := h.Get("X-Content-Type-Options"); got != "nosniff" {
				t.Errorf("X-Content-Type-Options %q", got)
			}
			if got := h.Get("Access-Control-Allow-Origin"); (got == "*") != tc.cors {
				t.Errorf("Access-Control-Allow-Origin %q, want cross-origin readable: %v", got, tc.cors)
			}
			if !bytes.Equal(rec.Body.Bytes(), tc.body) {
				t.Errorf("body is not the embedded file (%d bytes, want %d)", rec.Body.Len(), len(tc.body))
			}
			etag := h.Get("ETag")
			if !regexp.MustCompile(`^"[0-9a-f]{16}"$`).MatchString(etag) {
				t.Fatalf("ETag %q", etag)
			}
			again := do(e, http.MethodGet, tc.path, map[string]string{"If-None-Match": etag})
			if again.Code != http.StatusNotModified {
				t.Errorf("revalidation: %d, want 304", again.Code)
			}
			head := do(e, http.MethodHead, tc.path, nil)
			if head.Code != http.StatusOK || head.Body.Len() != 0 || head.Header().Get("Content-Type") != tc.contentType {
				t.Errorf("HEAD: %d, %d body bytes, Content-Type %q", head.Code, head.Body.Len(), head.Header().Get("Content-Type"))
			}
		})
	}
}

func TestRegisterAloneServesNoConsole(t *testing.T) {
	e := echo.New()
	Register(e)
	if rec := do(e, http.MethodGet, SSETransportPath, nil); rec.Code != http.StatusOK {
		t.Fatalf("GET %s: %d", SSETransportPath, rec.Code)
	}
	for _, p := range []string{ConsolePath, ConsoleScriptPath, PhoenixPath, SelfTestPrefix + "/stream"} {
		if rec := do(e, http.MethodGet, p, nil); rec.Code != http.StatusNotFound {
			t.Errorf("GET %s without RegisterConsole: %d, want 404", p, rec.Code)
		}
	}
}

func TestConsolePageLoads(t *testing.T) {
	e, _ := newEcho(SelfTestConfig{})
	rec := do(e, http.MethodGet, "/", nil)
	page := rec.Body.String()
	h := rec.Header()
	csp := h.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'self'", "script-src 'self'", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("Content-Security-Policy %q lacks %q", csp, want)
		}
	}
	if h.Get("X-Frame-Options") != "DENY" || h.Get("Referrer-Policy") != "no-referrer" {
		t.Errorf("X-Frame-Options %q, Referrer-Policy %q", h.Get("X-Frame-Options"), h.Get("Referrer-Policy"))
	}
	for _, want := range []string{"<title>Sluice console</title>", `<script type="module" src="console.js">`,
		`id="token"`, `id="transport"`, `value="sse"`, `value="longpoll"`, `id="frames"`, `id="selftest-run"`, "sluice token --secret"} {
		if !strings.Contains(page, want) {
			t.Errorf("the page lacks %s", want)
		}
	}
	// everything the page and its module load is served here, and nothing
	// comes from elsewhere
	refs := regexp.MustCompile(`(?:src|href)="([^"]+)"`).FindAllStringSubmatch(page, -1)
	refs = append(refs, regexp.MustCompile(`(?m)^import .* from "([^"]+)"`).FindAllStringSubmatch(string(consoleJS), -1)...)
	if len(refs) < 4 {
		t.Fatalf("found only %d references in the page and console.js", len(refs))
	}
	for _, m := range refs {
		ref := m[1]
		if strings.HasPrefix(ref, "data:") {
			continue
		}
		if strings.Contains(ref, "//") {
			t.Errorf("the console loads %s from another origin", ref)
			continue
		}
		p := "/" + strings.TrimPrefix(strings.TrimPrefix(ref, "./"), "/")
		if got := do(e, http.MethodGet, p, nil); got.Code != http.StatusOK {
			t.Errorf("the console refers to %s: GET %s answers %d", ref, p, got.Code)
		}
	}
}

func TestPhoenixVendorCopy(t *testing.T) {
	first, rest, _ := bytes.Cut(phoenixJS, []byte("\n"))
	for _, want := range []string{`"phoenix"`, "1.8.16", "MIT"} {
		if !bytes.Contains(first, []byte(want)) {
			t.Errorf("the first line of vendor/phoenix.mjs does not name %s: %s", want, first)
		}
	}
	for _, want := range []string{"LongPoll,", "Presence,", "Socket\n};", "var Socket = class"} {
		if !bytes.Contains(rest, []byte(want)) {
			t.Errorf("vendor/phoenix.mjs lacks %q", want)
		}
	}
	if bytes.Contains(rest, []byte("sourceMappingURL")) {
		t.Error("vendor/phoenix.mjs refers to a source map that is not served")
	}
}

// event is one server-sent event, with when it was read.
type event struct {
	name, id string
	data     map[string]any
	at       time.Time
}

// stream is a self-test response read as events.
type stream struct {
	resp     *http.Response
	comments []string
	events   chan event
	done     chan error // the body's end: nil, or the read error
}

func openStream(t *testing.T, ctx context.Context, url string) *stream {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = resp.Body.Close() })
	s := &stream{resp: resp, events: make(chan event, 200), done: make(chan error, 1)}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, b)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 8192), 1<<20)
	// comments are read here, before the first event
	var cur event
	var commentsDone = make(chan struct{})
	go func() {
		closed := false
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, ":"):
				s.comments = append(s.comments, line)
			case line == "":
				if cur.name != "" || cur.data != nil {
					cur.at = time.Now()
					s.events <- cur
					cur = event{}
				}
			default:
				if !closed {
					close(commentsDone)
					closed = true
				}
				field, val, _ := strings.Cut(line, ": ")
				switch field {
				case "event":
					cur.name = val
				case "id":
					cur.id = val
				case "data":
					if err := json.Unmarshal([]byte(val), &cur.data); err != nil {
						cur.data = map[string]any{"unparsed": val}
					}
				}
			}
		}
		if !closed {
			close(commentsDone)
		}
		close(s.events)
		s.done <- sc.Err()
	}()
	select {
	case <-commentsDone:
	case <-time.After(5 * time.Second):
		t.Fatal("no event within 5 s")
	}
	return s
}

func (s *stream) next(t *testing.T) event {
	t.Helper()
	select {
	case ev, ok := <-s.events:
		if !ok {
			t.Fatal("the stream ended")
		}
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no event within 5 s")
	}
	return event{}
}

func (s *stream) end(t *testing.T) {
	t.Helper()
	select {
	case ev, ok := <-s.events:
		if ok {
			t.Fatalf("another event after the last: %+v", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the stream did not end")
	}
	if err := <-s.done; err != nil {
		t.Fatalf("the stream ended with %v, not cleanly", err)
	}
}

func checkStreamHeaders(t *testing.T, h http.Header) {
	t.Helper()
	if got := h.Get("Content-Type"); got != "text/event-stream; charset=utf-8" {
		t.Errorf("Content-Type %q", got)
	}
	cc := h.Get("Cache-Control")
	if !strings.Contains(cc, "no-cache") || !strings.Contains(cc, "no-transform") {
		t.Errorf("Cache-Control %q, want no-cache and no-transform", cc)
	}
	if got := h.Get("X-Accel-Buffering"); got != "no" {
		t.Errorf("X-Accel-Buffering %q", got)
	}
	if got := h.Get("Access-Control-Allow-Origin"); got != "*" {
		t.Errorf("Access-Control-Allow-Origin %q", got)
	}
}

func checkPadding(t *testing.T, comments []string) {
	t.Helper()
	n := 0
	for _, c := range comments {
		n += len(c)
	}
	if n < SelfTestPadding || len(comments) == 0 || !strings.HasPrefix(comments[0], ": sluice self-test: ") {
		t.Errorf("comments before the first event: %d bytes (want ≥ %d) starting %.60q", n, SelfTestPadding, comments)
	}
}

func num(t *testing.T, ev event, key string) int64 {
	t.Helper()
	v, ok := ev.data[key].(float64)
	if !ok {
		t.Fatalf("%s event has no number %q: %v", ev.name, key, ev.data)
	}
	return int64(v)
}

func TestSelfTestStream(t *testing.T) {
	e, st := newEcho(SelfTestConfig{})
	srv := httptest.NewServer(e)
	defer srv.Close()
	const count, interval = 4, 60 * time.Millisecond
	s := openStream(t, context.Background(), srv.URL+SelfTestPrefix+"/stream?count=4&interval=60ms")
	checkStreamHeaders(t, s.resp.Header)
	checkPadding(t, s.comments)
	var ticks []event
	for i := 1; i <= count; i++ {
		ev := s.next(t)
		if ev.name != "tick" || ev.id != strconv.Itoa(i) || num(t, ev, "seq") != int64(i) || num(t, ev, "count") != count ||
			num(t, ev, "interval_ms") != interval.Milliseconds() {
			t.Fatalf("event %d: %+v", i, ev)
		}
		ticks = append(ticks, ev)
	}
	done := s.next(t)
	if done.name != "done" || num(t, done, "count") != count {
		t.Fatalf("after the ticks: %+v", done)
	}
	s.end(t)
	// each event was flushed when sent: they arrive spread as they were sent
	sent := num(t, ticks[count-1], "sent") - num(t, ticks[0], "sent")
	arrived := ticks[count-1].at.Sub(ticks[0].at)
	if sent < (count-1)*interval.Milliseconds()*9/10 || arrived < time.Duration(sent)*time.Millisecond/2 {
		t.Errorf("sent over %d ms, arrived over %s", sent, arrived)
	}
	waitIdle(t, st)
}

func TestSelfTestIdle(t *testing.T) {
	e, st := newEcho(SelfTestConfig{})
	srv := httptest.NewServer(e)
	defer srv.Close()
	s := openStream(t, context.Background(), srv.URL+SelfTestPrefix+"/idle?seconds=0.25")
	checkStreamHeaders(t, s.resp.Header)
	checkPadding(t, s.comments)
	open := s.next(t)
	if open.name != "open" || num(t, open, "idle_ms") != 250 {
		t.Fatalf("first event: %+v", open)
	}
	still := s.next(t)
	if still.name != "still-open" || num(t, still, "idle_ms") < 250 || still.at.Sub(open.at) < 240*time.Millisecond {
		t.Fatalf("second event %+v, %s after the first", still, still.at.Sub(open.at))
	}
	s.end(t)
	waitIdle(t, st)
}

// waitIdle waits until no self-test runs.
func waitIdle(t *testing.T, st *selfTest) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for st.running.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d self-tests still running", st.running.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSelfTestEndsWhenTheClientGoesAway(t *testing.T) {
	e, st := newEcho(SelfTestConfig{})
	srv := httptest.NewServer(e)
	defer srv.Close()
	for _, path := range []string{"/idle?seconds=60", "/stream?count=100&interval=1s"} {
		ctx, cancel := context.WithCancel(context.Background())
		s := openStream(t, ctx, srv.URL+SelfTestPrefix+path)
		s.next(t)
		if st.running.Load() != 1 {
			t.Fatalf("%s: %d running", path, st.running.Load())
		}
		cancel()
		waitIdle(t, st)
	}
}

func TestSelfTestEndsOnDrain(t *testing.T) {
	draining := make(chan struct{})
	e, st := newEcho(SelfTestConfig{Draining: draining})
	srv := httptest.NewServer(e)
	defer srv.Close()
	idle := openStream(t, context.Background(), srv.URL+SelfTestPrefix+"/idle?seconds=600")
	ticks := openStream(t, context.Background(), srv.URL+SelfTestPrefix+"/stream?count=100&interval=1s")
	idle.next(t)
	ticks.next(t)
	close(draining)
	for _, s := range []*stream{idle, ticks} {
		if ev := s.next(t); ev.name != "aborted" {
			t.Fatalf("on drain: %+v", ev)
		}
		s.end(t)
	}
	waitIdle(t, st)
}

func TestSelfTestBadInput(t *testing.T) {
	e, _ := newEcho(SelfTestConfig{MaxIdle: 90 * time.Second})
	for _, target := range []string{
		"/stream?count=0", "/stream?count=101", "/stream?count=abc", "/stream?count=1.5", "/stream?count=1&count=2",
		"/stream?interval=1ms", "/stream?interval=6s", "/stream?interval=soon", "/stream?interval=-5", "/stream?interval=",
		"/stream?count=100&interval=2s", // 200 s in all
		"/idle?seconds=0", "/idle?seconds=0.01", "/idle?seconds=91", "/idle?seconds=NaN", "/idle?seconds=Inf",
		"/idle?seconds=abc", "/idle?seconds=", "/idle?seconds=1&seconds=2",
	} {
		rec := do(e, http.MethodGet, SelfTestPrefix+target, nil)
		if rec.Code != http.StatusBadRequest {
			t.Errorf("GET %s: %d, want 400", target, rec.Code)
			continue
		}
		if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			t.Errorf("GET %s: Content-Type %q", target, ct)
		}
		var body map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || len(body) != 1 {
			t.Errorf("GET %s: body %s", target, rec.Body)
			continue
		}
		if msg, _ := body["error"].(string); msg == "" {
			t.Errorf("GET %s: no error string: %s", target, rec.Body)
		}
	}
	// the bounds are named
	rec := do(e, http.MethodGet, SelfTestPrefix+"/idle?seconds=91", nil)
	if !strings.Contains(rec.Body.String(), "90") {
		t.Errorf("the error does not name the limit: %s", rec.Body)
	}
	// and good input with odd forms is accepted
	for _, target := range []string{"/stream?count=2&interval=10", "/stream?count=1&interval=0.02s", "/idle?seconds=0.1"} {
		if rec := do(e, http.MethodGet, SelfTestPrefix+target, nil); rec.Code != http.StatusOK {
			t.Errorf("GET %s: %d %s", target, rec.Code, rec.Body)
		}
	}
}

func TestSelfTestConcurrencyCap(t *testing.T) {
	e, st := newEcho(SelfTestConfig{MaxConcurrent: 2})
	srv := httptest.NewServer(e)
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	a := openStream(t, ctx, srv.URL+SelfTestPrefix+"/idle?seconds=60")
	b := openStream(t, context.Background(), srv.URL+SelfTestPrefix+"/stream?count=100&interval=1s")
	a.next(t)
	b.next(t)
	for _, path := range []string{"/idle", "/stream"} {
		resp, err := http.Get(srv.URL + SelfTestPrefix + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		var msg map[string]string
		if resp.StatusCode != http.StatusServiceUnavailable || json.Unmarshal(body, &msg) != nil || !strings.Contains(msg["error"], "at most 2") {
			t.Errorf("a third self-test: %d %s", resp.StatusCode, body)
		}
		if resp.Header.Get("Retry-After") == "" {
			t.Error("503 without Retry-After")
		}
	}
	cancel() // one ends: another may start
	deadline := time.Now().Add(2 * time.Second)
	for st.running.Load() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("%d running after a client went away", st.running.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	c := openStream(t, context.Background(), srv.URL+SelfTestPrefix+"/idle?seconds=0.1")
	c.next(t)
	c.next(t)
	c.end(t)
	_ = b.resp.Body.Close()
	waitIdle(t, st)
	http.DefaultClient.CloseIdleConnections()
}
