package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/sluicegw/sluice/gateway"
)

// Every answer under /socket/ says Cache-Control: no-store: errors such as
// 404 and 405 (a shared cache would keep them), the SSE POST's 200 and its
// preflight; the transports' more specific headers stay.
func TestEveryAnswerUnderSocketIsNoStore(t *testing.T) {
	s := hermeticServer(t)
	tok, err := s.gw.Connect(context.Background(), gateway.ConnectInfo{Token: userTokenFor(t, "42"), Vsn: "2.0.0"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		method, target, body string
		hdr                  map[string]string
		status               int
		cacheControl         string
	}{
		{"GET", "/socket/nope", "", nil, http.StatusNotFound, "no-store"},
		{"PUT", "/socket/sse", "{}", nil, http.StatusMethodNotAllowed, "no-store"},
		{"OPTIONS", "/socket/sse", "", map[string]string{"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}, http.StatusNoContent, "no-store"},
		{"POST", "/socket/sse", `[null,"1","phoenix","heartbeat",{}]`, map[string]string{"X-Sluice-Session": s.gw.SessionCredential(tok.SessionID)}, http.StatusOK, "no-store"},
		{"GET", "/socket/sse?vsn=2.0.0&token=garbage", "", nil, http.StatusForbidden, "no-store"},
		{"OPTIONS", "/socket/longpoll", "", nil, http.StatusOK, "no-store, private"},
	} {
		req := httptest.NewRequest(tc.method, tc.target, strings.NewReader(tc.body))
		for k, v := range tc.hdr {
			req.Header.Set(k, v)
		}
		rec := httptest.NewRecorder()
		s.echo.ServeHTTP(rec, req)
		if rec.Code != tc.status {
			t.Errorf("%s %s: %d %s, want %d", tc.method, tc.target, rec.Code, rec.Body, tc.status)
		}
		if cc := rec.Header().Get("Cache-Control"); cc != tc.cacheControl {
			t.Errorf("%s %s: Cache-Control %q, want %q", tc.method, tc.target, cc, tc.cacheControl)
		}
	}
	// Outside /socket/ the header is left to each route.
	rec := httptest.NewRecorder()
	s.echo.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	if cc := rec.Header().Get("Cache-Control"); cc != "" {
		t.Errorf("/healthz: Cache-Control %q, want none", cc)
	}
}
