package longpoll_test

import (
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/sluicegw/sluice/gateway"
)

// refusals is an Observer that counts refusals, as /metrics would.
type refusals struct {
	gateway.Observer
	mu     sync.Mutex
	counts map[string]int
}

func (r *refusals) Refused(transport, reason string) {
	r.mu.Lock()
	r.counts[transport+"/"+reason]++
	r.mu.Unlock()
}

func (r *refusals) count(key string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.counts[key]
}

func newLimitedEnv(t *testing.T, origins []string, limits func(*gateway.Config)) (*env, *refusals) {
	t.Helper()
	obs := &refusals{Observer: gateway.NopObserver{}, counts: map[string]int{}}
	checker, err := gateway.NewOriginChecker(origins)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, envConfig{Origins: checker, Limits: func(c *gateway.Config) {
		c.Observer = obs
		if limits != nil {
			limits(c)
		}
	}})
	return e, obs
}

// Each limit: the refusal, its status and error body, the metric, and the
// session still usable where it should be.
func TestLimits(t *testing.T) {
	t.Run("payload", func(t *testing.T) {
		e, obs := newLimitedEnv(t, nil, func(c *gateway.Config) { c.MaxPayloadBytes = 64 })
		c := e.connect(t, "42", "2.0.0")
		r := c.post(t, "application/x-ndjson", `[null,"1","phoenix","heartbeat",{}]`+"\n"+`["1","2","room:a","ping",{"x":"`+strings.Repeat("y", 100)+`"}]`)
		if r.HTTPStatus != http.StatusRequestEntityTooLarge || r.Status != 413 || !strings.Contains(r.Error, "payload too large") {
			t.Fatalf("want HTTP 413 {status:413, error: payload too large}, got HTTP %d %s", r.HTTPStatus, r.Body)
		}
		if obs.count("longpoll/payload_too_large") != 1 {
			t.Errorf("metric not counted: %v", obs.counts)
		}
		c.send(t, `[null,"3","phoenix","heartbeat",{}]`)
		requireFrames(t, c.recv(t), `[null,"3","phoenix","phx_reply",{"response":{},"status":"ok"}]`) // the refused batch's heartbeat never ran
	})
	t.Run("field too long", func(t *testing.T) {
		// Refs, join_refs, topics and events are echoed into replies and
		// kept in the session: over 255 bytes the batch is refused whole.
		e, obs := newLimitedEnv(t, nil, nil)
		c := e.connect(t, "42", "2.0.0")
		long := strings.Repeat("x", 300)
		for field, frame := range map[string]string{
			"ref":      `[null,"` + long + `","phoenix","heartbeat",{}]`,
			"join_ref": `["` + long + `","2","room:a","phx_join",{}]`,
			"topic":    `["1","2","` + long + `","phx_join",{}]`,
			"event":    `["1","2","room:a","` + long + `",{}]`,
		} {
			r := c.post(t, "application/x-ndjson", `[null,"1","phoenix","heartbeat",{}]`+"\n"+frame)
			want := field + " is 300 bytes, the limit is 255"
			if r.HTTPStatus != http.StatusBadRequest || r.Status != 400 || !strings.Contains(r.Error, want) || !strings.Contains(r.Error, "nothing was applied") {
				t.Fatalf("a 300-byte %s: want HTTP 400 {status:400, error: %s; nothing was applied}, got HTTP %d %s", field, want, r.HTTPStatus, r.Body)
			}
		}
		if n := obs.count("longpoll/malformed"); n != 4 {
			t.Errorf("metric: %d refusals counted, want 4: %v", n, obs.counts)
		}
		c.send(t, `[null,"3","phoenix","heartbeat",{}]`)
		requireFrames(t, c.recv(t), `[null,"3","phoenix","phx_reply",{"response":{},"status":"ok"}]`) // the refused batches' heartbeats never ran
	})
	t.Run("rate", func(t *testing.T) {
		// One token per 100 s: no refill can come during the test, however
		// slow the machine (the refill is tested on the limiter's own clock).
		e, obs := newLimitedEnv(t, nil, func(c *gateway.Config) { c.PostRate, c.PostBurst = 0.01, 2 })
		c := e.connect(t, "42", "2.0.0")
		for i := range 2 {
			if r := c.post(t, "application/x-ndjson", `[null,"`+string(rune('1'+i))+`","phoenix","heartbeat",{}]`); r.Status != 200 {
				t.Fatalf("within the burst: %s", r.Body)
			}
		}
		r := c.post(t, "application/x-ndjson", `[null,"9","phoenix","heartbeat",{}]`)
		if r.HTTPStatus != http.StatusTooManyRequests || r.Status != 429 || r.Header.Get("Retry-After") == "" || r.Error == "" {
			t.Fatalf("want HTTP 429 with Retry-After and an error, got HTTP %d %v %s", r.HTTPStatus, r.Header, r.Body)
		}
		if obs.count("longpoll/rate_limited") != 1 {
			t.Errorf("metric not counted: %v", obs.counts)
		}
		// The refused batch changed nothing: the session polls on.
		c.poll(t)
	})
	t.Run("sessions per user", func(t *testing.T) {
		e, obs := newLimitedEnv(t, nil, func(c *gateway.Config) { c.MaxSessionsPerUser = 1 })
		c := e.connect(t, "42", "2.0.0")
		r := e.request(t, http.MethodGet, "token="+qe(userToken(t, "42"))+"&vsn=2.0.0", nil, "")
		if r.HTTPStatus != http.StatusOK || r.Status != 403 || !strings.Contains(r.Error, "too many sessions") {
			t.Fatalf("second session: want {status:403, error: too many sessions}, got HTTP %d %s", r.HTTPStatus, r.Body)
		}
		if obs.count("longpoll/too_many_sessions") != 1 {
			t.Errorf("metric not counted: %v", obs.counts)
		}
		e.connect(t, "43", "2.0.0") // another user
		c.send(t, `[null,"1","phoenix","heartbeat",{}]`)
		c.recv(t) // the first session is unaffected
	})
	t.Run("origin", func(t *testing.T) {
		e, obs := newLimitedEnv(t, []string{"//example.com"}, nil)
		ut := qe(userToken(t, "42"))
		r := e.request(t, http.MethodGet, "token="+ut+"&vsn=2.0.0", map[string]string{"Origin": "https://evil.test"}, "")
		if r.HTTPStatus != http.StatusOK || r.Status != 403 || !strings.Contains(r.Error, "origin") {
			t.Fatalf("disallowed origin: want {status:403} as Phoenix answers, got HTTP %d %s", r.HTTPStatus, r.Body)
		}
		if obs.count("longpoll/origin") != 1 {
			t.Errorf("metric not counted: %v", obs.counts)
		}
		if r := e.request(t, http.MethodGet, "token="+ut+"&vsn=2.0.0", map[string]string{"Origin": "https://example.com"}, ""); r.Status != 410 {
			t.Fatalf("allowed origin: want 410, got %s", r.Body)
		}
		if r := e.request(t, http.MethodGet, "token="+ut+"&vsn=2.0.0", nil, ""); r.Status != 410 {
			t.Fatalf("no Origin (curl): want 410, got %s", r.Body)
		}
	})
}
