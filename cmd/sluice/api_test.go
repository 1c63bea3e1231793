package main

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// newTestServer builds a memory-store server from command-line flags.
func newTestServer(t *testing.T, args ...string) *server {
	t.Helper()
	cfg, err := parseServeFlags(append([]string{"--secret", strings.Repeat("s", 32)}, args...), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	s, err := newServer(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// callAPI sends a POST or PUT to s with a bearer key ("" sends none) and
// returns the status and body.
func callAPI(t *testing.T, s *server, method, path, key, body string) (int, string) {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	rec := httptest.NewRecorder()
	s.echo.ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

func TestPerRouteAPIKeys(t *testing.T) {
	s := newTestServer(t, "--api-key", "admin-key", "--api-keys", "broadcast=pub-key, salas=rooms-key,broadcast=pub-key-2")
	broadcast := `{"topic":"sala:lobby","event":"aviso","payload":{}}`
	disconnect := `{"socket_id":"user_socket:42"}`
	room := `{"miembros":[1,2]}`
	for _, tc := range []struct {
		method, path, key, body string
		want                    int
	}{
		{"POST", "/api/broadcast", "admin-key", broadcast, http.StatusOK},
		{"POST", "/api/broadcast", "pub-key", broadcast, http.StatusOK},
		{"POST", "/api/broadcast", "pub-key-2", broadcast, http.StatusOK},
		{"POST", "/api/broadcast", "rooms-key", broadcast, http.StatusUnauthorized},
		{"POST", "/api/broadcast", "", broadcast, http.StatusUnauthorized},
		{"POST", "/api/disconnect", "pub-key", disconnect, http.StatusUnauthorized},
		{"POST", "/api/disconnect", "admin-key", disconnect, http.StatusOK},
		{"PUT", "/api/salas/r1", "pub-key", room, http.StatusUnauthorized},
		{"PUT", "/api/salas/r1", "rooms-key", room, http.StatusOK},
	} {
		code, body := callAPI(t, s, tc.method, tc.path, tc.key, tc.body)
		if code != tc.want {
			t.Errorf("%s %s with key %q: %d %s, want %d", tc.method, tc.path, tc.key, code, body, tc.want)
		}
		if code == http.StatusUnauthorized && !strings.Contains(body, `"error"`) {
			t.Errorf("%s %s with key %q: refusal without an error body: %s", tc.method, tc.path, tc.key, body)
		}
	}
	// Refusals are counted.
	rec := httptest.NewRecorder()
	s.echo.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if !strings.Contains(rec.Body.String(), `sluice_requests_refused_total{reason="unauthorized",transport="api"} 4`) {
		t.Errorf("metrics do not count 4 unauthorized API calls:\n%s", grepLines(rec.Body.String(), "refused"))
	}
}

func TestAPIKeysRefusesBadConfiguration(t *testing.T) {
	for _, keys := range []string{"nope=k", "broadcast", "broadcast=", "=k"} {
		cfg, err := parseServeFlags([]string{"--api-keys", keys}, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := newServer(cfg, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "--api-keys") {
			t.Errorf("--api-keys %q: err %v, want an error naming the flag", keys, err)
		}
	}
	// Without any key the API is closed, with 403 and a reason.
	s := newTestServer(t)
	if code, body := callAPI(t, s, "POST", "/api/broadcast", "x", `{}`); code != http.StatusForbidden || !strings.Contains(body, "--api-key") {
		t.Errorf("no keys configured: %d %s, want 403 naming --api-key", code, body)
	}
}

// grepLines returns the lines of s containing sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
