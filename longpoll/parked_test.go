package longpoll_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sluicegw/sluice/internal/idlepoll"
)

// rawConn is a client connection that reads answers byte for byte.
type rawConn struct {
	t    *testing.T
	conn net.Conn
	// seen holds what was read off the connection, for rawAnswer.
	seen bytes.Buffer
	br   *bufio.Reader
}

func dialRaw(t *testing.T, e *env) *rawConn {
	t.Helper()
	conn, err := net.Dial("tcp", e.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	rc := &rawConn{t: t, conn: conn}
	rc.br = bufio.NewReader(io.TeeReader(conn, &rc.seen))
	return rc
}

// getRequest is a keep-alive GET of the LongPoll path with query.
func getRequest(query string, extra ...string) string {
	return "GET " + lpPath + "?" + query + " HTTP/1.1\r\nHost: sluice.test\r\n" + strings.Join(extra, "") + "\r\n"
}

func (rc *rawConn) send(req string) {
	rc.t.Helper()
	if _, err := io.WriteString(rc.conn, req); err != nil {
		rc.t.Fatal(err)
	}
}

// rawAnswer is one answer as it came off the wire, and decoded.
type rawAnswer struct {
	bytes []byte
	resp  *http.Response
	body  lpBody
}

type lpBody struct {
	Messages []string `json:"messages"`
	Status   int      `json:"status"`
	Token    string   `json:"token"`
}

// read reads the next answer whole.
func (rc *rawConn) read() rawAnswer {
	rc.t.Helper()
	_ = rc.conn.SetReadDeadline(time.Now().Add(15 * time.Second))
	resp, err := http.ReadResponse(rc.br, nil)
	if err != nil {
		rc.t.Fatalf("reading an answer: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		rc.t.Fatalf("reading an answer's body: %v", err)
	}
	// What the reader took beyond this answer stays for the next.
	raw := rc.seen.Bytes()[:rc.seen.Len()-rc.br.Buffered()]
	a := rawAnswer{bytes: bytes.Clone(raw), resp: resp}
	rc.seen.Next(len(raw))
	if err := json.Unmarshal(b, &a.body); err != nil {
		rc.t.Fatalf("answer body %q: %v", b, err)
	}
	return a
}

// requireClosed requires the server to close the connection, with nothing
// more on it.
func (rc *rawConn) requireClosed() {
	rc.t.Helper()
	_ = rc.conn.SetReadDeadline(time.Now().Add(15 * time.Second))
	if b, err := rc.br.ReadByte(); err != io.EOF {
		rc.t.Fatalf("want the connection closed, got byte %q, error %v", b, err)
	}
}

// waitParked waits until n polls are parked on e.
func waitParked(t *testing.T, e *env, n int) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); e.lp.ParkedPolls() != n; {
		if time.Now().After(deadline) {
			t.Fatalf("want %d parked polls, have %d", n, e.lp.ParkedPolls())
		}
		time.Sleep(2 * time.Millisecond)
	}
}

var dateLine = regexp.MustCompile(`(?m)^Date: [^\r]*\r$`)

// sameBytes requires two answers to be the same bytes but for their Date.
func sameBytes(t *testing.T, parked, handler []byte) {
	t.Helper()
	p := dateLine.ReplaceAll(parked, []byte("Date: -\r"))
	h := dateLine.ReplaceAll(handler, []byte("Date: -\r"))
	if !bytes.Equal(p, h) {
		t.Fatalf("a parked poll's answer differs from the handler's\nparked:\n%q\nhandler:\n%q", p, h)
	}
}

// A parked poll's answer is the one its handler would have sent, byte for
// byte: woken by a message, woken by one larger than net/http's buffer
// (chunked), and at the end of the window.
func TestParkedAnswerIsTheHandlersAnswer(t *testing.T) {
	parked := newEnv(t, envConfig{})
	handler := newEnv(t, envConfig{Gateway: parked.gw, NoPark: true})
	c := parked.connect(t, "42", "2.0.0")
	c.join(t, "room:lobby", "1", "ana")
	tok := c.tok

	for _, tc := range []struct {
		name    string
		payload string
	}{
		{"woken", "hello"},
		{"woken, large", strings.Repeat("x", 3000)},
		{"window end", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pc, hc := dialRaw(t, parked), dialRaw(t, handler)
			pc.send(getRequest(c.queryWith(tok)))
			waitParked(t, parked, 1)
			hc.send(getRequest(c.queryWith(tok)))
			if tc.payload != "" {
				if err := parked.gw.Broadcast(context.Background(), "room:lobby", "news", map[string]string{"text": tc.payload}); err != nil {
					t.Fatal(err)
				}
			}
			pa, ha := pc.read(), hc.read()
			want := 204
			if tc.payload != "" {
				want = 200
			}
			if pa.body.Status != want || len(pa.body.Messages) != map[bool]int{true: 1, false: 0}[want == 200] {
				t.Fatalf("want status %d, got %s", want, pa.bytes)
			}
			if tc.payload == "" && pa.body.Token != tok {
				t.Fatalf("an empty answer must give back the poll's token")
			}
			if tc.name == "woken, large" && pa.resp.TransferEncoding == nil {
				t.Fatalf("want a chunked answer, as net/http's for a large body: %q", pa.bytes[:200])
			}
			sameBytes(t, pa.bytes, ha.bytes)
			tok = pa.body.Token
		})
	}
}

// phoenix.js reuses the connection of a poll for its next request: a parked
// poll's connection serves it, whether it comes after the answer, while
// the poll waits, or pipelined with the poll.
func TestParkedConnectionServesTheNextRequest(t *testing.T) {
	e := newEnv(t, envConfig{})
	c := e.connect(t, "42", "2.0.0")
	c.join(t, "room:lobby", "1", "ana")
	broadcast := func(text string) {
		t.Helper()
		if err := e.gw.Broadcast(context.Background(), "room:lobby", "news", map[string]string{"text": text}); err != nil {
			t.Fatal(err)
		}
	}
	rc := dialRaw(t, e)
	tok := c.tok
	requireNews := func(a rawAnswer, text string) {
		t.Helper()
		if a.body.Status != 200 || len(a.body.Messages) != 1 || !strings.Contains(a.body.Messages[0], text) {
			t.Fatalf("want the news %q, got %s", text, a.bytes)
		}
		tok = a.body.Token
	}

	// After the answer.
	rc.send(getRequest(c.queryWith(tok)))
	waitParked(t, e, 1)
	broadcast("one")
	requireNews(rc.read(), "one")
	rc.send(getRequest(c.queryWith(tok)))
	waitParked(t, e, 1)
	broadcast("two")
	requireNews(rc.read(), "two")

	// While the poll waits: the client's next request (a POST, as
	// phoenix.js sends on another connection, here on this one) waits for
	// the poll's answer, then is served.
	rc.send(getRequest(c.queryWith(tok)))
	waitParked(t, e, 1)
	push := `["1","9","room:lobby","shout",{"text":"three"}]`
	rc.send("POST " + lpPath + "?" + c.queryWith(tok) + " HTTP/1.1\r\nHost: sluice.test\r\nContent-Type: application/json\r\nContent-Length: " + strconv.Itoa(len(push)) + "\r\n\r\n" + push)
	broadcast("four")
	requireNews(rc.read(), "four")
	if a := rc.read(); a.body.Status != 200 || a.resp.StatusCode != 200 {
		t.Fatalf("the POST sent while the poll waited: want status 200, got %s", a.bytes)
	}

	// Pipelined: two polls in one write, the second with the first's
	// token as the client has it (it gets what follows).
	rc.send(getRequest(c.queryWith(tok)) + getRequest(c.queryWith(tok)))
	a := rc.read()
	if a.body.Status != 200 {
		t.Fatalf("the shout: want status 200, got %s", a.bytes)
	}
	if b := rc.read(); b.body.Status != 200 || b.body.Token != a.body.Token {
		t.Fatalf("the pipelined poll with the same token: want the same answer, got %s", b.bytes)
	}
	tok = a.body.Token
	rc.send(getRequest(c.queryWith(tok)) + getRequest(c.queryWith(tok)))
	waitParked(t, e, 1)
	broadcast("five")
	requireNews(rc.read(), "five")
	if b := rc.read(); b.body.Status != 200 || !strings.Contains(strings.Join(b.body.Messages, ""), "five") {
		t.Fatalf("the pipelined poll: want the news five, got %s", b.bytes)
	}
}

// A request that says Connection: close gets its answer, with
// Connection: close, and the connection closed.
func TestParkedPollConnectionClose(t *testing.T) {
	e := newEnv(t, envConfig{})
	c := e.connect(t, "42", "2.0.0")
	rc := dialRaw(t, e)
	rc.send(getRequest(c.queryWith(c.tok), "Connection: close\r\n"))
	waitParked(t, e, 1)
	a := rc.read()
	if a.body.Status != 204 || !a.resp.Close {
		t.Fatalf("want status 204 with Connection: close, got %s", a.bytes)
	}
	rc.requireClosed()
}

// A client that leaves while its poll is parked is noticed: the poll goes,
// and with it every goroutine it had.
func TestParkedPollNoticesTheClientLeaving(t *testing.T) {
	e := newEnv(t, envConfig{Window: time.Hour})
	c := e.connect(t, "42", "2.0.0")
	c.join(t, "room:lobby", "1", "ana")
	ignore := goleak.IgnoreCurrent()
	for range 3 {
		rc := dialRaw(t, e)
		rc.send(getRequest(c.queryWith(c.tok)))
		waitParked(t, e, 1)
		rc.conn.Close()
		waitParked(t, e, 0)
	}
	goleak.VerifyNone(t, ignore, goleak.IgnoreAnyFunction(idlepoll.Loop))
	// The session lives on for its client's next poll.
	rc := dialRaw(t, e)
	rc.send(getRequest(c.queryWith(c.tok)))
	waitParked(t, e, 1)
	if err := e.gw.Broadcast(context.Background(), "room:lobby", "news", map[string]string{"text": "still here"}); err != nil {
		t.Fatal(err)
	}
	if a := rc.read(); a.body.Status != 200 || len(a.body.Messages) != 1 {
		t.Fatalf("want the news, got %s", a.bytes)
	}
}

// A drain answers every parked poll at once, empty, and closes their
// connections: their clients poll again, elsewhere.
func TestDrainAnswersParkedPolls(t *testing.T) {
	e := newEnv(t, envConfig{Window: time.Hour})
	const n = 5
	conns := make([]*rawConn, n)
	toks := make([]string, n)
	for i := range conns {
		c := e.connect(t, "42", "2.0.0")
		toks[i] = c.tok
		conns[i] = dialRaw(t, e)
		conns[i].send(getRequest(c.queryWith(c.tok)))
	}
	waitParked(t, e, n)
	e.gw.Drain()
	for i, rc := range conns {
		a := rc.read()
		if a.body.Status != 204 || a.body.Token != toks[i] || !a.resp.Close {
			t.Fatalf("poll %d: want status 204 with its own token and Connection: close, got %s", i, a.bytes)
		}
		rc.requireClosed()
	}
	waitParked(t, e, 0)
}

// A session that ends while its poll is parked gets the handler's answer:
// a new session when the poll has a user token (status 410).
func TestParkedPollSessionEnds(t *testing.T) {
	e := newEnv(t, envConfig{Window: time.Hour})
	c := e.connect(t, "42", "2.0.0")
	rc := dialRaw(t, e)
	rc.send(getRequest(c.queryWith(c.tok)))
	waitParked(t, e, 1)
	if _, err := e.gw.EndSession(context.Background(), sessionID(t, c.tok), "test"); err != nil {
		t.Fatal(err)
	}
	a := rc.read()
	if a.body.Status != 410 || a.body.Token == "" || sessionID(t, a.body.Token) == sessionID(t, c.tok) {
		t.Fatalf("want status 410 with a new session, got %s", a.bytes)
	}
}

// An answered poll's connection waits for the client's next poll as long as
// the server's IdleTimeout, as net/http's own keep-alive connections do, not
// only its ReadHeaderTimeout (which net/http gives a new connection, and so a
// given-back one): a proxy pooling connections would race that close. Past
// the idle timeout it is closed.
func TestAnsweredPollConnectionWaitsTheIdleTimeout(t *testing.T) {
	const readHeader = 100 * time.Millisecond
	e := newEnv(t, envConfig{ReadHeaderTimeout: readHeader, IdleTimeout: time.Hour})
	c := e.connect(t, "42", "2.0.0")
	c.join(t, "room:lobby", "1", "ana")
	rc := dialRaw(t, e)
	rc.send(getRequest(c.queryWith(c.tok)))
	waitParked(t, e, 1)
	if err := e.gw.Broadcast(context.Background(), "room:lobby", "news", map[string]string{"text": "one"}); err != nil {
		t.Fatal(err)
	}
	a := rc.read()
	if a.body.Status != 200 {
		t.Fatalf("want the news, got %s", a.bytes)
	}
	time.Sleep(5 * readHeader) // idle, well past the header timeout
	rc.send(getRequest(c.queryWith(a.body.Token)))
	waitParked(t, e, 1)

	short := newEnv(t, envConfig{ReadHeaderTimeout: readHeader, IdleTimeout: 200 * time.Millisecond, Window: 50 * time.Millisecond})
	sc := short.connect(t, "42", "2.0.0")
	raw := dialRaw(t, short)
	raw.send(getRequest(sc.queryWith(sc.tok)))
	if a := raw.read(); a.body.Status != 204 {
		t.Fatalf("want the window's 204, got %s", a.bytes)
	}
	_ = raw.conn.SetReadDeadline(time.Now().Add(15 * time.Second))
	if n, err := raw.conn.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("past the idle timeout: want the connection closed (EOF), got %d bytes, %v", n, err)
	}
}

// Parked polls hold no goroutine of the server while they wait (on Linux,
// the process's epoll set watches their connections), yet each still
// notices its client leaving, and is answered and serves its client's next
// poll on the same connection.
func TestParkedPollsHoldNoGoroutine(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("parked polls are watched without a goroutine on Linux only")
	}
	e := newEnv(t, envConfig{Window: time.Hour})
	c := e.connect(t, "42", "2.0.0")
	c.join(t, "room:lobby", "1", "ana")
	// The poller's goroutine, started by the first parked poll.
	first := dialRaw(t, e)
	first.send(getRequest(c.queryWith(c.tok)))
	waitParked(t, e, 1)
	base := runtime.NumGoroutine()

	const n = 20
	conns := []*rawConn{first}
	for range n {
		rc := dialRaw(t, e)
		rc.send(getRequest(c.queryWith(c.tok)))
		conns = append(conns, rc)
	}
	waitParked(t, e, n+1)
	// Goroutines that served the requests may take a moment to end.
	var extra int
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if extra = runtime.NumGoroutine() - base; extra < n/2 || time.Now().After(deadline) {
			break
		}
	}
	if extra >= n/2 {
		t.Fatalf("%d parked polls hold %d goroutines more than one", n, extra)
	}

	// One client leaves: its poll ends.
	conns[n].conn.Close()
	waitParked(t, e, n)
	// The others are answered, and serve their next poll.
	if err := e.gw.Broadcast(context.Background(), "room:lobby", "news", map[string]string{"text": "hi"}); err != nil {
		t.Fatal(err)
	}
	next := make([]string, n)
	for i, rc := range conns[:n] {
		a := rc.read()
		if a.body.Status != 200 || len(a.body.Messages) != 1 {
			t.Fatalf("want the news, got %s", a.bytes)
		}
		next[i] = a.body.Token
	}
	for i, rc := range conns[:n] {
		rc.send(getRequest(c.queryWith(next[i])))
	}
	waitParked(t, e, n)
}
