package loadgen

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestSignHS256KnownVector: the example token of RFC 7519's tooling
// (jwt.io), which every JWT library verifies.
func TestSignHS256KnownVector(t *testing.T) {
	got := signHS256([]byte(`{"sub":"1234567890","name":"John Doe","iat":1516239022}`), "your-256-bit-secret")
	want := "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
	if got != want {
		t.Errorf("signHS256 =\n%s\nwant\n%s", got, want)
	}
}

// verifyHS256 checks a token as a server does and returns its claims.
func verifyHS256(tok, secret string) (map[string]any, error) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("%d parts", len(parts))
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(parts[0] + "." + parts[1]))
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || !hmac.Equal(sig, mac.Sum(nil)) {
		return nil, fmt.Errorf("bad signature (%v)", err)
	}
	var header map[string]any
	h, _ := base64.RawURLEncoding.DecodeString(parts[0])
	if err := json.Unmarshal(h, &header); err != nil || header["alg"] != "HS256" || header["typ"] != "JWT" {
		return nil, fmt.Errorf("header %s: %v", h, err)
	}
	var claims map[string]any
	c, _ := base64.RawURLEncoding.DecodeString(parts[1])
	if err := json.Unmarshal(c, &claims); err != nil {
		return nil, fmt.Errorf("claims %s: %w", c, err)
	}
	return claims, nil
}

func TestCentrifugoTokenRoundTrip(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	tok := centrifugoToken(`user "1"`, testSecret, now, time.Hour)
	claims, err := verifyHS256(tok, testSecret)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if claims["sub"] != `user "1"` || claims["iat"] != float64(now.Unix()) || claims["exp"] != float64(now.Unix()+3600) {
		t.Errorf("claims %v", claims)
	}
	if _, err := verifyHS256(tok, testSecret+"x"); err == nil {
		t.Error("the token verifies under another secret")
	}
}

func TestParseCFPush(t *testing.T) {
	for _, tc := range []struct {
		name, data string
		check      func(cfPush) bool
		wantErr    bool
	}{
		{"connect", `{"connect":{"client":"c","version":"6","subs":{"bench:0":{}},"ping":25,"session":"s"}}`,
			func(p cfPush) bool { return strings.Contains(string(p.connect), `"subs"`) && p.pub == nil }, false},
		{"publication", `{"channel":"bench:0","pub":{"data":{"p":1,"s":2,"t":3},"offset":7}}`,
			func(p cfPush) bool {
				return string(p.channel) == `"bench:0"` && strings.HasPrefix(string(p.pub), `{"data"`)
			}, false},
		{"wrapped publication", `{"push":{"channel":"bench:0","pub":{"data":{"p":1,"s":2,"t":3}}}}`,
			func(p cfPush) bool { return string(p.channel) == `"bench:0"` && p.pub != nil }, false},
		{"ping", `{}`, func(p cfPush) bool {
			return p.connect == nil && p.pub == nil && p.disconnect == nil && p.channel == nil
		}, false},
		{"disconnect", `{"disconnect":{"code":3001,"reason":"shutdown"}}`,
			func(p cfPush) bool { return strings.Contains(string(p.disconnect), "3001") }, false},
		{"junk", `{"channel":`, nil, true},
		{"not an object", `[1,2]`, nil, true},
	} {
		p, err := parseCFPush([]byte(tc.data))
		if (err != nil) != tc.wantErr || err == nil && !tc.check(p) {
			t.Errorf("%s: parseCFPush(%s) = %+v, %v", tc.name, tc.data, p, err)
		}
	}
}

// fakeCentrifugo is a Centrifugo uni_sse endpoint and publish API, as far
// as the tool uses them: it checks the token and the API key, answers the
// connect with the channels asked for, sends pings, and refuses every
// refuseEvery-th publish with an API error.
type fakeCentrifugo struct {
	t           *testing.T
	refuseEvery int
	junk        bool // send a malformed push after each publication

	mu        sync.Mutex
	streams   map[chan string]map[string]bool // stream → its channels
	publishes int
}

func (f *fakeCentrifugo) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /connection/uni_sse", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Token string                     `json:"token"`
			Subs  map[string]json.RawMessage `json:"subs"`
		}
		if err := json.Unmarshal([]byte(r.URL.Query().Get("cf_connect")), &req); err != nil {
			http.Error(w, "bad connect", http.StatusBadRequest)
			return
		}
		if _, err := verifyHS256(req.Token, testSecret); err != nil {
			w.Header().Set("Content-Type", "text/event-stream")
			fmt.Fprint(w, "data: {\"disconnect\":{\"code\":3500,\"reason\":\"invalid token\"}}\n\n")
			return
		}
		ch := make(chan string, 1000)
		subs := map[string]bool{}
		var names []string
		for n := range req.Subs {
			subs[n] = true
			names = append(names, fmt.Sprintf("%q:{}", n))
		}
		f.mu.Lock()
		f.streams[ch] = subs
		f.mu.Unlock()
		defer func() {
			f.mu.Lock()
			delete(f.streams, ch)
			f.mu.Unlock()
		}()
		w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
		fmt.Fprintf(w, "\ndata: {\"connect\":{\"client\":\"c\",\"version\":\"6\",\"subs\":{%s},\"ping\":25}}\n\ndata: {}\n\n", strings.Join(names, ","))
		pumpEvents(w, r, ch)
	})
	mux.HandleFunc("POST /api/publish", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-API-Key") != testAPIKey {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		var req struct {
			Channel string          `json:"channel"`
			Data    json.RawMessage `json:"data"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		f.publishes++
		if f.refuseEvery > 0 && f.publishes%f.refuseEvery == 0 {
			fmt.Fprint(w, `{"error":{"code":102,"message":"unknown channel"}}`)
			return
		}
		ev := fmt.Sprintf("data: {\"channel\":%q,\"pub\":{\"data\":%s,\"offset\":%d}}\n\ndata: {}\n\n", req.Channel, req.Data, f.publishes)
		if f.junk {
			ev += "data: {\"channel\":\n\n"
		}
		for ch, subs := range f.streams {
			if subs[req.Channel] {
				ch <- ev
			}
		}
		fmt.Fprint(w, `{"result":{}}`)
	})
	return mux
}

func newFakeCentrifugo(t *testing.T, f *fakeCentrifugo) *httptest.Server {
	f.t = t
	f.streams = map[chan string]map[string]bool{}
	srv := httptest.NewServer(f.handler())
	t.Cleanup(srv.Close)
	return srv
}

func TestRunCentrifugoBroadcast(t *testing.T) {
	fake := &fakeCentrifugo{refuseEvery: 7}
	srv := newFakeCentrifugo(t, fake)
	cfg := testConfig(srv.URL)
	cfg.Target = TargetCentrifugo
	cfg.Clients, cfg.Topics, cfg.Joins = 12, 3, 2
	cfg.Rate, cfg.Publishers, cfg.PayloadBytes = 60, 2, 200
	cfg.Messages, cfg.Duration = 42, time.Minute
	rep, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	checkClean(t, rep)
	// Publishes 7, 14, ... 42 were refused: 36 sent, 12 per topic; each
	// topic is joined by 8 of the 12 clients.
	if rep.Target != TargetCentrifugo || rep.Connected != 12 || rep.ConnectedSSE != 12 || rep.JoinedAtEnd != 12 {
		t.Errorf("target %q, connected %d (sse %d), joined at end %d", rep.Target, rep.Connected, rep.ConnectedSSE, rep.JoinedAtEnd)
	}
	if rep.Sent != 36 || rep.SendFailed != 6 || rep.Errors["publish/api_error"].Count != 6 || rep.Expected != 36*8 {
		t.Errorf("sent %d, failed %d, errors %v, expected %d; want 36 sent, 6 refused, %d expected", rep.Sent, rep.SendFailed, rep.Errors, rep.Expected, 36*8)
	}
	if rep.ConnectLatency.Count != 12 {
		t.Errorf("connect latency has %d samples for 12 clients", rep.ConnectLatency.Count)
	}
}

func TestRunCentrifugoRefusals(t *testing.T) {
	fake := &fakeCentrifugo{junk: true}
	srv := newFakeCentrifugo(t, fake)

	// A wrong secret: the server disconnects every client at once.
	cfg := testConfig(srv.URL)
	cfg.Target, cfg.Scenario, cfg.Clients = TargetCentrifugo, ScenarioConnect, 4
	cfg.Secret = testSecret + "-wrong"
	rep, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if rep.OK || rep.Failed != 4 || rep.FailedByKind["disconnect"].Count != 4 || !strings.Contains(rep.FailedByKind["disconnect"].Example, "invalid token") {
		t.Errorf("ok %v, failed %d by kind %v", rep.OK, rep.Failed, rep.FailedByKind)
	}

	// Malformed pushes are counted, and do not disturb the checks.
	cfg = testConfig(srv.URL)
	cfg.Target, cfg.Clients, cfg.Rate, cfg.Messages, cfg.Duration = TargetCentrifugo, 3, 20, 10, time.Minute
	rep, err = Run(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	checkClean(t, rep)
	if rep.Errors["bad_frame"].Count != 30 {
		t.Errorf("bad frames %v; want 30 (one after each of 10 messages to 3 clients)", rep.Errors["bad_frame"])
	}
}

// TestRunConnectScenario: the run ends once every client is in, without a
// window, and reports the connect figures.
func TestRunConnectScenario(t *testing.T) {
	srv := newTestServer(t)
	cfg := testConfig(srv.URL)
	cfg.Scenario, cfg.Transport = ScenarioConnect, TransportMix
	cfg.Clients, cfg.ConnectRate, cfg.Ramp = 30, 100, time.Hour
	cfg.Duration = time.Hour // not waited for
	cfg.APIKey = ""          // not needed: nothing is published
	cfg.PIDs = []int{os.Getpid()}
	rep, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if !rep.OK || rep.Connected != 30 || rep.Failed != 0 || rep.ConnectedLP != 10 {
		t.Errorf("ok %v, connected %d (longpoll %d), failed %d %v", rep.OK, rep.Connected, rep.ConnectedLP, rep.Failed, rep.FailedByKind)
	}
	if rep.WindowSeconds != 0 || rep.Sent != 0 || rep.RampSeconds != 0.3 || rep.ConnectRate != 100 {
		t.Errorf("window %.1fs, sent %d, ramp %.2fs, rate %g: want no window and a 0.3 s ramp", rep.WindowSeconds, rep.Sent, rep.RampSeconds, rep.ConnectRate)
	}
	if rep.ConnectLatency.Count != 30 || rep.ConnectLatency.Max <= 0 {
		t.Errorf("connect latency %+v", rep.ConnectLatency)
	}
	// The time to connect all ends with the last client in: after the last
	// start (at 29/30 of the ramp) and after the slowest connect.
	if rep.ConnectSeconds < 0.29 || rep.ConnectSeconds*1000 < rep.ConnectLatency.Max-0.01 {
		t.Errorf("connected all in %.3fs, with a 0.3 s ramp and a slowest connect of %.1f ms", rep.ConnectSeconds, rep.ConnectLatency.Max)
	}
	s := rep.Server
	if s == nil || s.CPUConnectSeconds < 0 || s.CPUPerConnectMs != 1000*s.CPUConnectSeconds/30 {
		t.Errorf("server %+v", s)
	}
	var b strings.Builder
	_ = rep.WriteText(&b)
	if !strings.Contains(b.String(), "ms per connect") || strings.Contains(b.String(), "window") {
		t.Errorf("text report:\n%s", b.String())
	}
}

func TestCentrifugoConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"longpoll", func(c *Config) { c.Transport = TransportLongPoll }, "uni_sse transport only"},
		{"chat", func(c *Config) { c.Scenario, c.TopicPattern = ScenarioChat, chatPattern }, "no chat app"},
		{"unknown target", func(c *Config) { c.Target = "phoenix" }, "--target must be"},
		{"negative connect rate", func(c *Config) { c.ConnectRate = -1 }, "--connect-rate"},
	} {
		cfg := testConfig("http://127.0.0.1:1")
		cfg.Target = TargetCentrifugo
		tc.change(&cfg)
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Validate() = %v, want %q", tc.name, err, tc.want)
		}
	}
	cfg := testConfig("http://127.0.0.1:1")
	cfg.Target, cfg.Scenario, cfg.APIKey = TargetCentrifugo, ScenarioConnect, ""
	if err := cfg.Validate(); err != nil {
		t.Errorf("a centrifugo connect storm without an API key: %v", err)
	}
}

func TestRedisDeltaRates(t *testing.T) {
	t0 := time.Unix(1000, 0)
	before := redisSample{at: t0, total: 100, calls: map[string]int64{"get": 10, "info": 4}, cpu: 10, mainCPU: 8}
	after := redisSample{at: t0.Add(4 * time.Second), total: 100 + probeReads + 40, calls: map[string]int64{"get": 40, "publish": 10, "info": 6}, cpu: 11, mainCPU: 8.5}
	rs := redisDelta(before, after)
	if rs.Commands != 40 || rs.Seconds != 4 || rs.PerSecond != 10 {
		t.Errorf("commands %d over %gs = %g/s; want 40 over 4s = 10/s", rs.Commands, rs.Seconds, rs.PerSecond)
	}
	if rs.CPUSeconds != 1 || rs.CPUPercent != 25 || rs.MainThreadCPUSeconds == nil || *rs.MainThreadCPUSeconds != 0.5 {
		t.Errorf("Redis CPU %gs (%g%%), main thread %v; want 1s over 4s (25%%), main thread 0.5s", rs.CPUSeconds, rs.CPUPercent, rs.MainThreadCPUSeconds)
	}
	if got := rs.cpuLine(); got != "1.00s (25.0% of a core; main thread 0.50s)" {
		t.Errorf("summary line %q", got)
	}
	before.mainCPU = -1 // a Redis before 6.2
	if rs := redisDelta(before, after); rs.MainThreadCPUSeconds != nil || rs.cpuLine() != "1.00s (25.0% of a core)" {
		t.Errorf("without the main thread's figure: %v, %q", rs.MainThreadCPUSeconds, rs.cpuLine())
	}
	if len(rs.Top) != 2 || rs.Top[0] != (RedisCommand{"get", 30}) || rs.Top[1] != (RedisCommand{"publish", 10}) {
		t.Errorf("top %v", rs.Top)
	}
}

// TestCFReadFrames: uni_sse's stream as Centrifugo writes it (a blank
// line first, CRLF or LF endings, multi-line data) is split into pushes.
func TestCFReadFrames(t *testing.T) {
	cfg := DefaultConfig()
	c := &cfClient{}
	c.e = &engine{cfg: &cfg, event: "bench", centrifugo: true}
	c.names, c.topics = []string{"bench:0"}, []int{0}
	c.joinRef, c.joined, c.rejoin = []string{""}, []bool{false}, []bool{false}
	c.e.measuring.Store(true)
	stream := "\r\ndata: {\"connect\":{\"subs\":{\"bench:0\":{}}}}\r\n\r\n" +
		"data: {}\n\n" +
		": a comment\n" +
		"data: {\"channel\":\"bench:0\",\n" +
		"data: \"pub\":{\"data\":{\"p\":1,\"s\":1,\"t\":5}}}\n\n" +
		"data: {\"channel\":\"bench:0\",\"pub\":{\"data\":{\"p\":1,\"s\":1,\"t\":5}}}\n\n" +
		"data: {\"channel\":\"other\",\"pub\":{\"data\":{\"p\":1,\"s\":2,\"t\":5}}}\n\n"
	c.events.br = bufio.NewReaderSize(strings.NewReader(stream), 16) // lines longer than the buffer too
	if err := c.read(); err == nil || err.Error() != "EOF" {
		t.Fatalf("read: %v", err)
	}
	if c.state.Load() != stateConnected || c.nJoined != 1 {
		t.Errorf("state %d, joined %d: the connect reply did not connect the client", c.state.Load(), c.nJoined)
	}
	if c.e.delivered.Load() != 1 || c.e.dups.Load() != 1 || len(c.e.errs.snapshot()) != 0 {
		t.Errorf("delivered %d, dups %d, errors %v; want 1, 1 and none", c.e.delivered.Load(), c.e.dups.Load(), c.e.errs.snapshot())
	}
}

// TestParseRedisInfo reads the counters and CPU times out of INFO's text as
// Redis 7 writes it (CRLF, section headers), children's CPU left out.
func TestParseRedisInfo(t *testing.T) {
	info := "# Stats\r\ntotal_connections_received:5\r\ntotal_commands_processed:1234\r\n\r\n" +
		"# Commandstats\r\ncmdstat_zadd:calls=7,usec=70,usec_per_call=10.00,rejected_calls=0,failed_calls=0\r\n\r\n" +
		"# CPU\r\nused_cpu_sys:1.500000\r\nused_cpu_user:2.250000\r\nused_cpu_sys_children:9.000000\r\n" +
		"used_cpu_user_children:9.000000\r\nused_cpu_sys_main_thread:1.000000\r\nused_cpu_user_main_thread:2.000000\r\n"
	s, err := parseRedisInfo(redisSample{calls: map[string]int64{}, mainCPU: -1}, info)
	if err != nil {
		t.Fatal(err)
	}
	if s.total != 1234 || s.calls["zadd"] != 7 || s.cpu != 3.75 || s.mainCPU != 3 {
		t.Errorf("parsed total %d, zadd %d, cpu %g, main thread %g; want 1234, 7, 3.75, 3", s.total, s.calls["zadd"], s.cpu, s.mainCPU)
	}
	old := strings.NewReplacer("used_cpu_sys_main_thread", "x", "used_cpu_user_main_thread", "y").Replace(info)
	if s, err := parseRedisInfo(redisSample{calls: map[string]int64{}, mainCPU: -1}, old); err != nil || s.mainCPU != -1 || s.cpu != 3.75 {
		t.Errorf("INFO of a Redis before 6.2: cpu %g, main thread %g, %v; want 3.75, -1 (unknown)", s.cpu, s.mainCPU, err)
	}
	if _, err := parseRedisInfo(redisSample{calls: map[string]int64{}, mainCPU: -1}, "total_commands_processed:1\r\n"); err == nil {
		t.Error("INFO without CPU times: no error")
	}
}
