package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/sluicegw/sluice/gateway"
	"github.com/sluicegw/sluice/gateway/token"
)

// TestAPIErrorsAreForPeople: /api/broadcast refusals name the field and
// what it needs, never the validator's internals, and JSON error strings
// are not HTML-escaped.
func TestAPIErrorsAreForPeople(t *testing.T) {
	s := newTestServer(t, "--api-key", "k")
	for _, tc := range []struct{ body, want string }{
		{`{"topic":"sala:lobby","payload":{}}`, `"event" is required`},
		{`{"event":"e"}`, `"topic" is required`},
		{`{"topic":"` + strings.Repeat("t", 300) + `","event":"e"}`, `"topic" must have at most 255 characters`},
		{`{"topic":1,"event":"e"}`, `"topic" must be a string, not a number`},
		{`{"topic":"t","event":"e","extra":1}`, `unknown field "extra"`},
		{`{"topic":"t",`, `ends in the middle`},
		{`topic=t`, `not valid JSON`},
		{``, `empty body`},
	} {
		code, body := callAPI(t, s, "POST", "/api/broadcast", "k", tc.body)
		if code != http.StatusBadRequest || !strings.Contains(errorOf(t, body), tc.want) {
			t.Errorf("body %.40q: %d %s; want 400 saying %q", tc.body, code, body, tc.want)
		}
		for _, internal := range []string{"broadcastRequest", "Key:", "Error:Field", "json:", "validation for"} {
			if strings.Contains(body, internal) {
				t.Errorf("body %.40q: the answer shows internals (%q): %s", tc.body, internal, body)
			}
		}
	}
	code, body := callAPI(t, s, "POST", "/api/broadcast", "", `{}`)
	if code != http.StatusUnauthorized || !strings.Contains(body, "Authorization: Bearer <api key>") {
		t.Errorf("no key: %d %s; want 401 saying Authorization: Bearer <api key>, unescaped", code, body)
	}
	code, body = callAPI(t, s, "PUT", "/api/salas/r1", "k", `{"miembros":"42"}`)
	if code != http.StatusBadRequest || !strings.Contains(errorOf(t, body), `"miembros" must be an array, not a string`) {
		t.Errorf("PUT /api/salas with a bad body: %d %s", code, body)
	}
	code, body = callAPI(t, s, "POST", "/api/broadcast", "k", `{"topic":"sala:lobby","event":"anuncio","payload":{"mensaje":"hola"}}`)
	if code != http.StatusOK || strings.TrimSpace(body) != `{"ok":true}` {
		t.Errorf("a good broadcast: %d %s", code, body)
	}
}

// errorOf returns the "error" string of a JSON answer.
func errorOf(t *testing.T, body string) string {
	t.Helper()
	var v struct{ Error string }
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("not a JSON answer: %q", body)
	}
	return v.Error
}

// TestRedisURLMistakesSayWhatToDo: a URL without its scheme says how a
// Redis URL starts, and no error ever shows the URL's password.
func TestRedisURLMistakesSayWhatToDo(t *testing.T) {
	for _, tc := range []struct{ url, want string }{
		{"localhost:6379", "starts with redis:// or rediss://"},
		{"redis://u:SuperSecretPw@127.0.0.1:notaport/5", "does not parse"},
		{"http://u:SuperSecretPw@127.0.0.1:6379/0", "starts with redis:// or rediss://"},
	} {
		code, _, errOut := runCmd(t, nil, "serve", "--redis", tc.url, "--addr", "127.0.0.1:0")
		if code == 0 || !strings.Contains(errOut, tc.want) {
			t.Errorf("--redis %s: exit %d, %q; want it to say %q", tc.url, code, errOut, tc.want)
		}
		if strings.Contains(errOut, "SuperSecretPw") {
			t.Errorf("--redis %s: the password is printed: %q", tc.url, errOut)
		}
		if _, _, err := newRedisClient(tc.url); err == nil || strings.Contains(err.Error(), "SuperSecretPw") {
			t.Errorf("newRedisClient(%s): %v", tc.url, err)
		}
	}
}

// TestServeRefusesAPermanentRedisError: a Redis that answers and refuses
// (wrong password, a database it does not have) stops serve at once with
// a reason; a Redis that is down is waited for.
func TestServeRefusesAPermanentRedisError(t *testing.T) {
	mr := miniredis.RunT(t)
	mr.RequireAuth("right-password")
	refused := []string{"redis://:SuperSecretPw@" + mr.Addr() + "/0"}
	if u := os.Getenv("SLUICE_TEST_REDIS"); u != "" {
		// A real Redis has 16 databases unless configured otherwise.
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatalf("SLUICE_TEST_REDIS: %v", err)
		}
		pu.Path = "/99"
		refused = append(refused, pu.String())
	}
	for _, u := range refused {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		var errw bytes.Buffer
		err := serveCommand(ctx, []string{"--redis", u, "--addr", "127.0.0.1:0", "--secret", testSecret}, &errw)
		cancel()
		if err == nil || !strings.Contains(err.Error(), "refused the connection") || !strings.Contains(err.Error(), "check --redis") {
			t.Errorf("--redis %s: %v; want a refusal to start that says to check --redis", redact(u), err)
		} else if strings.Contains(err.Error(), "SuperSecretPw") || strings.Contains(errw.String(), "SuperSecretPw") {
			t.Errorf("the password is printed: %v\n%s", err, errw.String())
		}
	}

	// Nothing listens on port 1: Redis is down, serve serves (and stops
	// cleanly when told to).
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var errw bytes.Buffer
	if err := serveCommand(ctx, []string{"--redis", "redis://127.0.0.1:1/0", "--addr", "127.0.0.1:0", "--secret", testSecret, "--drain-delay", "0s"}, &errw); err != nil {
		t.Errorf("a Redis that is down: serve returned %v, want it to serve and wait for Redis", err)
	}

	for _, tc := range []struct {
		err  error
		want bool
	}{
		{redis.ErrClosed, false},
		{&net404{}, false},
		{context.DeadlineExceeded, false},
	} {
		if got := permanentRedisError(tc.err); got != tc.want {
			t.Errorf("permanentRedisError(%v) = %v", tc.err, got)
		}
	}
}

// net404 is a network error, as a dial to a Redis that is down returns.
type net404 struct{}

func (*net404) Error() string   { return "dial tcp 127.0.0.1:6379: connect: connection refused" }
func (*net404) Timeout() bool   { return false }
func (*net404) Temporary() bool { return true }

func redact(u string) string {
	if pu, err := url.Parse(u); err == nil {
		return pu.Redacted()
	}
	return "?"
}

// TestTokenMaxAgeTheSmallerWins: a token signed to live 1 s is refused
// after that second even though the server's --token-max-age is a day.
func TestTokenMaxAgeTheSmallerWins(t *testing.T) {
	s := newTestServer(t) // --token-max-age 24h
	signer := token.NewSigner(strings.Repeat("s", 32), gateway.UserSocketSalt)
	connect := func(signedAgo, maxAge time.Duration) string {
		tok, err := signer.Sign(int64(42), time.Now().Add(-signedAgo), maxAge)
		if err != nil {
			t.Fatal(err)
		}
		rec := httptest.NewRecorder()
		s.echo.ServeHTTP(rec, httptest.NewRequest("GET", "/socket/longpoll?vsn=2.0.0&token="+url.QueryEscape(tok), nil))
		return rec.Body.String()
	}
	if body := connect(2*time.Second, time.Second); !strings.Contains(body, `"status":403`) || !strings.Contains(body, "expired") {
		t.Errorf("a token signed with max age 1s, 2s ago: %s; want it refused as expired", body)
	}
	if body := connect(2*time.Second, time.Hour); !strings.Contains(body, `"status":410`) {
		t.Errorf("a token signed with max age 1h, 2s ago: %s; want a new session", body)
	}
	if body := connect(25*time.Hour, 48*time.Hour); !strings.Contains(body, `"status":403`) {
		t.Errorf("a token signed with max age 48h, 25h ago, against --token-max-age 24h: %s; want it refused", body)
	}
}
