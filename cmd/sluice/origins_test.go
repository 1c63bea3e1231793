package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

// --allowed-origins https://app.example.com admits that origin on port 443
// only, as Phoenix's check_origin does, on both transports; and with
// --cors-credentials a refused origin gets no CORS grant at all: no
// Access-Control-Allow-Origin, no Allow-Credentials, on the preflight or on
// the refusal (issue 10, item 7).
func TestAllowedOriginsOnBothTransports(t *testing.T) {
	// A short stream lifetime: a stream wrongly opened ends soon.
	s := hermeticServer(t, "--allowed-origins", "https://app.example.com", "--cors-credentials", "--sse-max-lifetime", "1s")
	srv := startHTTP(t, s)
	const allowed, otherPort, otherHost = "https://app.example.com", "https://app.example.com:8443", "https://evil.example"
	userToken := url.QueryEscape(userTokenFor(t, "42"))

	call := func(method, target string, hdr map[string]string) *httptest.ResponseRecorder {
		t.Helper()
		req := httptest.NewRequest(method, target, nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		rec := httptest.NewRecorder()
		s.echo.ServeHTTP(rec, req)
		return rec
	}
	noGrant := func(what string, h http.Header) {
		t.Helper()
		for _, k := range []string{"Access-Control-Allow-Origin", "Access-Control-Allow-Credentials", "Access-Control-Allow-Headers", "Access-Control-Allow-Methods"} {
			if v := h.Get(k); v != "" {
				t.Errorf("%s: a refused origin got %s: %q, want no CORS grant", what, k, v)
			}
		}
	}
	preflight := func(origin string) map[string]string {
		return map[string]string{"Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
	}

	for _, origin := range []string{otherPort, otherHost, "null"} {
		// LongPoll: Phoenix's {"status":403} (HTTP 200), for every method.
		for _, method := range []string{http.MethodGet, http.MethodPost, http.MethodOptions} {
			rec := call(method, "/socket/longpoll?vsn=2.0.0&token="+userToken, preflight(origin))
			var body struct {
				Status int    `json:"status"`
				Error  string `json:"error"`
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || body.Status != http.StatusForbidden || !strings.Contains(body.Error, "origin") {
				t.Errorf("longpoll %s from %s: %d %s, want {status:403} naming the origin", method, origin, rec.Code, rec.Body)
			}
			noGrant("longpoll "+method+" from "+origin, rec.Header())
		}
		// SSE: HTTP 403 for the stream, the POST and the preflight.
		for _, tc := range []struct{ method, target string }{
			{http.MethodGet, "/socket/sse?vsn=2.0.0&token=" + userToken},
			{http.MethodPost, "/socket/sse"},
			{http.MethodOptions, "/socket/sse"},
		} {
			rec := call(tc.method, tc.target, preflight(origin))
			if rec.Code != http.StatusForbidden || !strings.Contains(rec.Body.String(), "origin") {
				t.Errorf("sse %s from %s: %d %s, want 403 naming the origin", tc.method, origin, rec.Code, rec.Body)
			}
			noGrant("sse "+tc.method+" from "+origin, rec.Header())
		}
	}
	m := metricsOf(s)
	for _, tr := range []string{"longpoll", "sse"} {
		if !strings.Contains(m, `sluice_requests_refused_total{reason="origin",transport="`+tr+`"} 9`) {
			t.Errorf("want 9 origin refusals counted for %s:\n%s", tr, grepLines(m, "refused"))
		}
	}

	// The allowed origin connects on both transports, with its grant.
	rec := call(http.MethodGet, "/socket/longpoll?vsn=2.0.0&token="+userToken, map[string]string{"Origin": allowed})
	if !strings.Contains(rec.Body.String(), `"status":410`) || rec.Header().Get("Access-Control-Allow-Origin") != "*" {
		t.Errorf("longpoll from %s: %s, ACAO %q; want a new session (410) readable cross-origin", allowed, rec.Body, rec.Header().Get("Access-Control-Allow-Origin"))
	}
	rec = call(http.MethodOptions, "/socket/longpoll", preflight(allowed))
	if rec.Code != http.StatusOK || rec.Header().Get("Access-Control-Allow-Origin") != "*" {
		t.Errorf("longpoll preflight from %s: %d, ACAO %q", allowed, rec.Code, rec.Header().Get("Access-Control-Allow-Origin"))
	}
	rec = call(http.MethodOptions, "/socket/sse", preflight(allowed))
	if rec.Code != http.StatusNoContent || rec.Header().Get("Access-Control-Allow-Origin") != allowed || rec.Header().Get("Access-Control-Allow-Credentials") != "true" {
		t.Errorf("sse preflight from %s: %d, headers %v; want the origin echoed with credentials", allowed, rec.Code, rec.Header())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/socket/sse?vsn=2.0.0&token="+userToken, nil)
	req.Header.Set("Origin", allowed)
	res, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	first := make([]byte, 64)
	n, _ := io.ReadAtLeast(res.Body, first, 1)
	if res.StatusCode != http.StatusOK || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/event-stream") {
		t.Errorf("sse stream from %s: %d %q, want a stream", allowed, res.StatusCode, first[:n])
	}
	if res.Header.Get("Access-Control-Allow-Origin") != allowed || res.Header.Get("Access-Control-Allow-Credentials") != "true" {
		t.Errorf("sse stream from %s: headers %v; want the origin echoed with credentials", allowed, res.Header)
	}
}
