package main

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sluicegw/sluice/gateway"
)

// hermeticServer builds a memory-store server from args alone, whatever
// SLUICE_* or REDIS_URL the person running the tests has set.
func hermeticServer(t *testing.T, args ...string) *server {
	t.Helper()
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "SLUICE_") || k == "REDIS_URL" {
			t.Setenv(k, "") // restored after the test
			os.Unsetenv(k)
		}
	}
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

// startHTTP serves s on a real listener (deadlines and hijacking need one).
func startHTTP(t *testing.T, s *server) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(s.echo)
	t.Cleanup(srv.Close)
	return srv
}

// userTokenFor signs a user token with hermeticServer's secret.
func userTokenFor(t *testing.T, user string) string {
	t.Helper()
	tok, err := gateway.SignUserToken(strings.Repeat("s", 32), user, "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// metricsOf returns s's /metrics text.
func metricsOf(s *server) string {
	rec := httptest.NewRecorder()
	s.echo.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	return rec.Body.String()
}
