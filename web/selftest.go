package web

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
)

// SelfTestPrefix is where Sluice serves the self-test endpoints: under
// /socket/, so that they cross proxies and CDNs by the same rules as the
// transports they test (/socket/sse, /socket/longpoll). The console derives
// it from its socket path: socket path + "/selftest".
const SelfTestPrefix = "/socket/selftest"

// Bounds of the self-test parameters.
const (
	// MaxSelfTestCount is the most events one stream test sends.
	MaxSelfTestCount = 100
	// MinSelfTestInterval is the shortest interval between a stream test's
	// events.
	MinSelfTestInterval = 10 * time.Millisecond
	// MaxSelfTestInterval is the longest interval between a stream test's
	// events.
	MaxSelfTestInterval = 5 * time.Second
	// MaxSelfTestStream bounds a whole stream test: count × interval.
	MaxSelfTestStream = 2 * time.Minute
	// MinSelfTestIdle is the shortest silence an idle test may ask for.
	MinSelfTestIdle = 100 * time.Millisecond
	// DefaultMaxSelfTestIdle is the default cap of an idle test's silence.
	DefaultMaxSelfTestIdle = 10 * time.Minute
	// DefaultMaxSelfTests is the default number of self-tests one instance
	// runs at once; more are answered 503.
	DefaultMaxSelfTests = 100
	// SelfTestPadding is the size of the padding comment that starts every
	// self-test stream, as the SSE transport's ?padding=1: some proxies and
	// old clients hold the first 2 KiB of a response back.
	SelfTestPadding = 2048
)

// SelfTestConfig configures RegisterSelfTest. The zero value is usable.
type SelfTestConfig struct {
	// MaxConcurrent is how many self-tests (streams and idle tests
	// together) run at once on this instance; beyond it a request gets
	// 503. Zero means DefaultMaxSelfTests.
	MaxConcurrent int
	// MaxIdle caps the silence an idle test may ask for. Zero means
	// DefaultMaxSelfTestIdle.
	MaxIdle time.Duration
	// Draining, when closed, ends every running self-test at once (with an
	// "aborted" event), so that a graceful shutdown is not held up by
	// tests that stay silent for minutes. Typically gateway.Draining().
	Draining <-chan struct{}
}

// selfTest serves the self-test endpoints.
type selfTest struct {
	cfg     SelfTestConfig
	running atomic.Int64
}

// RegisterSelfTest serves the transport self-test on e under prefix (Sluice
// uses SelfTestPrefix). Both endpoints answer an event stream
// (text/event-stream, never cached, never buffered by nginx, readable with
// curl -N), need no token (they reveal nothing), end by themselves, and end
// when the client goes away:
//
//   - GET prefix/stream?count=10&interval=250ms: a 2 KiB padding comment,
//     then count "tick" events, one every interval, each carrying the
//     server's clock, then a "done" event. A page compares the spread of
//     their arrival times with the spread of their sending times: a path
//     that buffers streams delivers them together, or only at the end.
//   - GET prefix/idle?seconds=60: a padding comment and an "open" event,
//     then silence (no heartbeat) for that long, then a "still-open" event,
//     and the end. A path that cuts idle connections cuts it before: the
//     page sees after how long.
//
// Bad parameters get 400 with a JSON {"error": ...}; too many self-tests at
// once, 503.
func RegisterSelfTest(e *echo.Echo, prefix string, cfg SelfTestConfig) {
	newSelfTest(cfg).register(e, prefix)
}

func newSelfTest(cfg SelfTestConfig) *selfTest {
	if cfg.MaxConcurrent <= 0 {
		cfg.MaxConcurrent = DefaultMaxSelfTests
	}
	if cfg.MaxIdle <= 0 {
		cfg.MaxIdle = DefaultMaxSelfTestIdle
	}
	return &selfTest{cfg: cfg}
}

func (s *selfTest) register(e *echo.Echo, prefix string) {
	prefix = strings.TrimSuffix(prefix, "/")
	e.GET(prefix+"/stream", s.stream)
	e.GET(prefix+"/idle", s.idle)
}

// selfTestError answers a refused self-test with a JSON {"error": ...}.
func selfTestError(c echo.Context, status int, msg string) error {
	h := c.Response().Header()
	h.Set("Cache-Control", "no-store")
	h.Set("Access-Control-Allow-Origin", "*")
	return c.JSON(status, map[string]string{"error": msg})
}

// queryOnce returns the query parameter name, refusing it repeated.
func queryOnce(c echo.Context, name string) (string, bool, error) {
	vs, ok := c.Request().URL.Query()[name]
	switch {
	case !ok:
		return "", false, nil
	case len(vs) > 1:
		return "", false, fmt.Errorf("%s is given %d times; give it once", name, len(vs))
	}
	return vs[0], true, nil
}

// parseInterval reads a Go duration ("250ms", "1s") or plain milliseconds.
func parseInterval(v string) (time.Duration, error) {
	if ms, err := strconv.ParseInt(v, 10, 64); err == nil {
		if ms < 0 || ms > int64(time.Hour/time.Millisecond) {
			return 0, fmt.Errorf("interval %q is out of range", v)
		}
		return time.Duration(ms) * time.Millisecond, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("interval %q is neither a duration (250ms, 1s) nor milliseconds", v)
	}
	return d, nil
}

// streamParams validates the stream test's parameters.
func streamParams(c echo.Context) (count int, interval time.Duration, err error) {
	count, interval = 10, 250*time.Millisecond
	if v, ok, err := queryOnce(c, "count"); err != nil {
		return 0, 0, err
	} else if ok {
		n, perr := strconv.Atoi(v)
		if perr != nil || n < 1 || n > MaxSelfTestCount {
			return 0, 0, fmt.Errorf("count must be an integer from 1 to %d, got %q", MaxSelfTestCount, v)
		}
		count = n
	}
	if v, ok, err := queryOnce(c, "interval"); err != nil {
		return 0, 0, err
	} else if ok {
		d, perr := parseInterval(v)
		if perr != nil {
			return 0, 0, perr
		}
		if d < MinSelfTestInterval || d > MaxSelfTestInterval {
			return 0, 0, fmt.Errorf("interval must be from %s to %s, got %s", MinSelfTestInterval, MaxSelfTestInterval, d)
		}
		interval = d
	}
	if time.Duration(count)*interval > MaxSelfTestStream {
		return 0, 0, fmt.Errorf("count × interval must be at most %s, got %s", MaxSelfTestStream, time.Duration(count)*interval)
	}
	return count, interval, nil
}

// idleParams validates the idle test's parameter: seconds, possibly
// fractional (0.5), within [MinSelfTestIdle, cfg.MaxIdle]; default 60.
func (s *selfTest) idleParams(c echo.Context) (time.Duration, error) {
	idle := min(60*time.Second, s.cfg.MaxIdle)
	v, ok, err := queryOnce(c, "seconds")
	if err != nil || !ok {
		return idle, err
	}
	f, perr := strconv.ParseFloat(v, 64)
	maxSec := s.cfg.MaxIdle.Seconds()
	if perr != nil || math.IsNaN(f) || f < MinSelfTestIdle.Seconds() || f > maxSec {
		return 0, fmt.Errorf("seconds must be a number from %g to %g, got %q", MinSelfTestIdle.Seconds(), maxSec, v)
	}
	return time.Duration(f * float64(time.Second)), nil
}

// selfTestWriteTimeout bounds one write, so that a client that stopped
// reading frees its test.
const selfTestWriteTimeout = 10 * time.Second

// eventWriter writes one self-test stream.
type eventWriter struct {
	w   http.ResponseWriter
	rc  *http.ResponseController
	buf bytes.Buffer
}

// startStream sends the headers and the padding comment, with a note for curl.
func startStream(c echo.Context, note string) (*eventWriter, error) {
	w := c.Response()
	h := w.Header()
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	h.Set("Cache-Control", "no-cache, no-store, no-transform")
	h.Set("X-Accel-Buffering", "no")
	h.Set("Access-Control-Allow-Origin", "*")
	if c.Request().ProtoMajor == 1 {
		h.Set("Connection", "keep-alive") // illegal in HTTP/2
	}
	w.WriteHeader(http.StatusOK)
	ew := &eventWriter{w: w, rc: http.NewResponseController(w)}
	ew.buf.WriteString(": sluice self-test: " + note + "\n")
	ew.buf.WriteString(": padding for buffering proxies:")
	ew.buf.Write(bytes.Repeat([]byte{' '}, SelfTestPadding))
	ew.buf.WriteString("\n\n")
	return ew, ew.flush()
}

// event writes one named event whose data is v as JSON, and flushes it.
func (ew *eventWriter) event(name, id string, v any) error {
	data, _ := json.Marshal(v)
	ew.buf.WriteString("event: " + name + "\n")
	if id != "" {
		ew.buf.WriteString("id: " + id + "\n")
	}
	ew.buf.WriteString("data: ")
	ew.buf.Write(data)
	ew.buf.WriteString("\n\n")
	return ew.flush()
}

func (ew *eventWriter) flush() error {
	_ = ew.rc.SetWriteDeadline(time.Now().Add(selfTestWriteTimeout))
	_, err := ew.w.Write(ew.buf.Bytes())
	ew.buf.Reset()
	if err == nil {
		err = ew.rc.Flush()
	}
	return err
}

// admit counts a self-test in; it returns false (and answers 503) when
// too many run already. The caller must call s.done() once admitted.
func (s *selfTest) admit(c echo.Context) (bool, error) {
	if n := s.running.Add(1); n > int64(s.cfg.MaxConcurrent) {
		s.running.Add(-1)
		c.Response().Header().Set("Retry-After", "10")
		return false, selfTestError(c, http.StatusServiceUnavailable,
			fmt.Sprintf("too many self-tests running on this instance (at most %d at once); retry later", s.cfg.MaxConcurrent))
	}
	return true, nil
}

func (s *selfTest) done() { s.running.Add(-1) }

// draining is the drain channel, or one that never closes.
func (s *selfTest) draining() <-chan struct{} {
	if s.cfg.Draining == nil {
		return nil // a nil channel blocks forever in select
	}
	return s.cfg.Draining
}

func nowMs() int64 { return time.Now().UnixMilli() }

func (s *selfTest) stream(c echo.Context) error {
	count, interval, err := streamParams(c)
	if err != nil {
		return selfTestError(c, http.StatusBadRequest, err.Error())
	}
	if ok, err := s.admit(c); !ok {
		return err
	}
	defer s.done()
	ew, err := startStream(c, fmt.Sprintf("%d tick events, one every %s, then done", count, interval))
	if err != nil {
		return nil
	}
	ctx := c.Request().Context()
	start := time.Now()
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for seq := 1; ; seq++ {
		tick := map[string]any{"seq": seq, "count": count, "interval_ms": interval.Milliseconds(),
			"sent": nowMs(), "elapsed_ms": time.Since(start).Milliseconds()}
		if err := ew.event("tick", strconv.Itoa(seq), tick); err != nil {
			return nil
		}
		if seq == count {
			break
		}
		select {
		case <-ctx.Done():
			return nil // the client went away
		case <-s.draining():
			_ = ew.event("aborted", "", map[string]any{"reason": "the server is shutting down", "sent": nowMs()})
			return nil
		case <-ticker.C:
		}
	}
	_ = ew.event("done", "", map[string]any{"count": count, "interval_ms": interval.Milliseconds(),
		"sent": nowMs(), "elapsed_ms": time.Since(start).Milliseconds()})
	return nil
}

func (s *selfTest) idle(c echo.Context) error {
	idle, err := s.idleParams(c)
	if err != nil {
		return selfTestError(c, http.StatusBadRequest, err.Error())
	}
	if ok, err := s.admit(c); !ok {
		return err
	}
	defer s.done()
	ew, err := startStream(c, fmt.Sprintf("one open event, then silence for %s, then still-open", idle))
	if err != nil {
		return nil
	}
	start := time.Now()
	if err := ew.event("open", "", map[string]any{"sent": nowMs(), "idle_ms": idle.Milliseconds()}); err != nil {
		return nil
	}
	timer := time.NewTimer(idle)
	defer timer.Stop()
	select {
	case <-c.Request().Context().Done():
		return nil // the client went away (or the path cut it)
	case <-s.draining():
		_ = ew.event("aborted", "", map[string]any{"reason": "the server is shutting down", "sent": nowMs(),
			"idle_ms": time.Since(start).Milliseconds()})
		return nil
	case <-timer.C:
	}
	_ = ew.event("still-open", "", map[string]any{"sent": nowMs(), "idle_ms": time.Since(start).Milliseconds()})
	return nil
}
