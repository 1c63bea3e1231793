package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/sluicegw/sluice/gateway"
)

// trickle sends a request's headers and the first byte of a 100 kB body,
// then one byte every 50 ms, as a client holding connections open does, and
// returns the answer and its body; nil, and an error of the test, if no
// answer comes within 10 s.
func trickle(t *testing.T, addr, method, target string, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var head strings.Builder
	fmt.Fprintf(&head, "%s %s HTTP/1.1\r\nHost: sluice.test\r\nContent-Length: 100000\r\n", method, target)
	for k, v := range hdr {
		fmt.Fprintf(&head, "%s: %s\r\n", k, v)
	}
	head.WriteString("\r\n[")
	if _, err := io.WriteString(conn, head.String()); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	defer close(done)
	go func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				if _, err := conn.Write([]byte(" ")); err != nil {
					return
				}
			}
		}
	}()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Errorf("%s %s with a trickled body: no answer within 10 s: %v", method, target, err)
		return nil, nil
	}
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Errorf("%s %s with a trickled body: reading the answer: %v", method, target, err)
		return nil, nil
	}
	return res, body
}

// A client that sends its headers and then trickles the body is cut after
// --body-timeout with 408 and a JSON error, on every route that reads a
// body, and counted; before, it held its connection for as long as it
// liked (issue 10, item 5).
func TestTrickledBodyIsCutAfterBodyTimeout(t *testing.T) {
	s := hermeticServer(t, "--body-timeout", "300ms", "--api-key", "k")
	srv := startHTTP(t, s)
	addr := srv.Listener.Addr().String()
	// The client of a real session (the transports read a body only once
	// the session is proven), and one with no credential at all.
	tok, err := s.gw.Connect(context.Background(), gateway.ConnectInfo{Token: userTokenFor(t, "42"), Vsn: "2.0.0"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		transport, target string
		hdr               map[string]string
		envelope          bool // {"status": 408, "error"}, as the route answers errors
	}{
		{"sse", "/socket/sse", map[string]string{"Content-Type": "application/x-ndjson", "X-Sluice-Session": s.gw.SessionCredential(tok.SessionID)}, true},
		{"sse", "/socket/sse", map[string]string{"Content-Type": "application/x-ndjson"}, true},
		{"longpoll", "/socket/longpoll?vsn=2.0.0&token=" + url.QueryEscape(s.gw.WithKey(tok).String()), map[string]string{"Content-Type": "application/x-ndjson"}, true},
		{"api", "/api/broadcast", map[string]string{"Content-Type": "application/json", "Authorization": "Bearer k"}, false},
	} {
		res, body := trickle(t, addr, http.MethodPost, tc.target, tc.hdr)
		if res == nil {
			continue
		}
		if res.StatusCode != http.StatusRequestTimeout {
			t.Errorf("%s: trickled body answered %d %s, want 408", tc.transport, res.StatusCode, body)
			continue
		}
		var got struct {
			Status int    `json:"status"`
			Error  string `json:"error"`
		}
		if err := json.Unmarshal(body, &got); err != nil || !strings.Contains(got.Error, "--body-timeout") {
			t.Errorf("%s: 408 body %q: want a JSON error naming --body-timeout", tc.transport, body)
		}
		if tc.envelope && got.Status != http.StatusRequestTimeout {
			t.Errorf("%s: 408 body %q: want \"status\":408 as the route's other errors", tc.transport, body)
		}
		if !res.Close {
			t.Errorf("%s: a connection whose body was not read must be closed", tc.transport)
		}
	}
	m := metricsOf(s)
	for tr, n := range map[string]int{"sse": 2, "longpoll": 1, "api": 1} {
		if want := fmt.Sprintf(`sluice_requests_refused_total{reason="body_timeout",transport=%q} %d`, tr, n); !strings.Contains(m, want) {
			t.Errorf("metrics lack %s:\n%s", want, grepLines(m, "refused"))
		}
	}
}

// The body deadline covers only the body: a body that arrives in pieces
// within it is served, and it is cleared once the body is read, so neither
// a poll that waits after reading its body nor the next request on the same
// connection is cut. Streams (no body) are never cut.
func TestBodyTimeoutDoesNotCutPollsOrStreams(t *testing.T) {
	const bodyTimeout = 250 * time.Millisecond
	s := hermeticServer(t, "--body-timeout", bodyTimeout.String(), "--longpoll-window", "1s", "--sse-heartbeat", "100ms")
	srv := startHTTP(t, s)
	tok, err := s.gw.Connect(context.Background(), gateway.ConnectInfo{Token: userTokenFor(t, "42"), Vsn: "2.0.0"})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	target := "/socket/longpoll?vsn=2.0.0&token=" + url.QueryEscape(s.gw.WithKey(tok).String())
	roundTrip := func(what, raw string) (status int, body string) {
		t.Helper()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(conn, raw); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		b, err := io.ReadAll(res.Body)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		var lp struct {
			Status int    `json:"status"`
			Token  string `json:"token"`
		}
		_ = json.Unmarshal(b, &lp)
		if lp.Token != "" { // the next poll acknowledges what this one got
			target = "/socket/longpoll?vsn=2.0.0&token=" + url.QueryEscape(lp.Token)
		}
		return lp.Status, string(b)
	}
	frame := `[null,"1","phoenix","heartbeat",{}]`

	// A body in two pieces, the second well within the deadline.
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: sluice.test\r\nContent-Length: %d\r\n\r\n%s", target, len(frame), frame[:10])
	time.Sleep(bodyTimeout / 5)
	if status, body := roundTrip("POST in two pieces", frame[10:]); status != http.StatusOK {
		t.Fatalf("POST in two pieces: %s, want {status:200}", body)
	}
	// The same connection, a poll: its reply comes at once.
	if status, body := roundTrip("poll", "GET "+target+" HTTP/1.1\r\nHost: sluice.test\r\n\r\n"); status != http.StatusOK || !strings.Contains(body, "phx_reply") {
		t.Fatalf("poll after the POST: %s, want the heartbeat's reply", body)
	}
	// Polls that wait the whole window (four times the body timeout), one
	// with no body and one with a small body read at once: both answer 204.
	for _, rest := range []string{"\r\n", "Content-Length: 2\r\n\r\n{}"} {
		raw := "GET " + target + " HTTP/1.1\r\nHost: sluice.test\r\n" + rest
		start := time.Now()
		if status, body := roundTrip("waiting poll", raw); status != http.StatusNoContent {
			t.Fatalf("a poll that waits past --body-timeout (%q): %s after %v, want {status:204} after the window", raw, body, time.Since(start))
		}
	}

	// A stream stays open and keeps its heartbeats well past the timeout.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/socket/sse?vsn=2.0.0&token="+url.QueryEscape(userTokenFor(t, "43")), nil)
	res, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("stream: %d", res.StatusCode)
	}
	opened := time.Now()
	lines := bufio.NewScanner(res.Body)
	heartbeats := 0
	for time.Since(opened) < 4*bodyTimeout {
		if !lines.Scan() {
			t.Fatalf("the stream ended after %v (%v), before 4 × --body-timeout", time.Since(opened), lines.Err())
		}
		if lines.Text() == "event: heartbeat" {
			heartbeats++
		}
	}
	if heartbeats == 0 {
		t.Error("no heartbeat on the stream")
	}
}

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
