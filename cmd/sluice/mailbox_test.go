package main

import (
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/sluicegw/sluice/gateway"
	"github.com/sluicegw/sluice/gateway/token"
)

// --mailbox-bytes (SLUICE_MAILBOX_BYTES) is 16 MiB by default and must be
// positive.
func TestMailboxBytesFlag(t *testing.T) {
	cfg, err := parseServeFlags(nil, &strings.Builder{})
	if err != nil || cfg.MailboxBytes != 16<<20 {
		t.Errorf("default --mailbox-bytes = %d, %v; want %d", cfg.MailboxBytes, err, 16<<20)
	}
	withEnv(t, map[string]string{"SLUICE_MAILBOX_BYTES": "1048576"})
	if cfg, err = parseServeFlags(nil, &strings.Builder{}); err != nil || cfg.MailboxBytes != 1<<20 {
		t.Errorf("SLUICE_MAILBOX_BYTES=1048576: --mailbox-bytes = %d, %v", cfg.MailboxBytes, err)
	}
	for _, v := range []string{"0", "-1", "4MiB"} {
		if _, err := parseServeFlags([]string{"--mailbox-bytes", v}, &strings.Builder{}); err == nil {
			t.Errorf("--mailbox-bytes %s accepted", v)
		}
	}
}

// A LongPoll client of the chat app that pings with large payloads and
// never polls makes its session keep at most --mailbox-bytes of replies, with
// the memory store and with Redis; when it polls, the lobby gets phx_error
// (phoenix.js rejoins) after the newest replies.
func TestServeBoundsMailboxes(t *testing.T) {
	t.Run("memory", func(t *testing.T) { testServeBoundsMailboxes(t) })
	t.Run("redis", func(t *testing.T) {
		testServeBoundsMailboxes(t, "--redis", "redis://"+miniredis.RunT(t).Addr())
	})
}

func testServeBoundsMailboxes(t *testing.T, args ...string) {
	const budget = 200_000
	s := newTestServer(t, append(args, "--mailbox-bytes", fmt.Sprint(budget))...)
	t.Cleanup(func() { _ = s.close() })
	signer := token.NewSigner(strings.Repeat("s", 32), gateway.UserSocketSalt)
	userToken, err := signer.Sign(int64(42), time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var session string // the LongPoll session token, as the last GET returned it
	longpoll := func(method, sessionToken, body string) (messages []string) {
		t.Helper()
		target := "/socket/longpoll?vsn=2.0.0&token=" + url.QueryEscape(sessionToken)
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(method, target, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/x-ndjson")
		s.echo.ServeHTTP(rec, req)
		var answer struct {
			Status   int
			Token    string
			Messages []string
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &answer); err != nil {
			t.Fatalf("%s: %d %.200s", method, rec.Code, rec.Body.String())
		}
		if method == "GET" && answer.Token != "" {
			session = answer.Token
		}
		if method == "POST" && answer.Status != 200 {
			t.Fatalf("POST: %.200s", rec.Body.String())
		}
		return answer.Messages
	}
	longpoll("GET", userToken, "") // 410: the session
	longpoll("POST", session, `["1","1","sala:lobby","phx_join",{}]`)
	longpoll("GET", session, "")

	// 3 POSTs of 5 pings of 60 KB: 900 KB of replies, never polled.
	text := strings.Repeat("x", 60_000)
	ref := 1
	for range 3 {
		var batch []string
		for range 5 {
			ref++
			batch = append(batch, fmt.Sprintf(`["1","%d","sala:lobby","ping",{"eco":"%s"}]`, ref, text))
		}
		longpoll("POST", session, strings.Join(batch, "\n"))
	}
	got := longpoll("GET", session, "")
	if len(got) < 2 || len(got) > budget/60_000+1 {
		t.Fatalf("the poll got %d messages, want at most %d ping replies and phx_error", len(got), budget/60_000)
	}
	if last := got[len(got)-1]; last != `["1","1","sala:lobby","phx_error",{"reason":"missed messages"}]` {
		t.Errorf("the poll ends with %.100s, want phx_error for the lobby", last)
	}
	for i, m := range got[:len(got)-1] {
		want := fmt.Sprintf(`["1","%d","sala:lobby","phx_reply",`, ref-(len(got)-2)+i)
		if !strings.HasPrefix(m, want) {
			t.Errorf("message %d is %.60s…, want a reply starting %s (the newest replies, in order)", i, m, want)
		}
	}
}
