package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// sseReadBuffer is the size of each SSE client's line reader: Sluice's
// events are a few hundred bytes, and a longer line is assembled apart.
const sseReadBuffer = 1024

// sseClient is one client over Sluice's SSE transport: a streaming GET that
// joins its topics with ?join=, resumed with Last-Event-ID whenever it ends
// (each stream ends after --sse-max-lifetime), and POSTs to the URL the
// stream's session event names for pushes and rejoins.
type sseClient struct {
	client
	streamURL  string
	post       atomic.Pointer[sessionPost] // where and how to POST to the session
	retry      time.Duration               // from the last retry: field
	hadSession bool

	events  eventStream
	lastID  []byte
	id      []byte
	hasID   bool
	event   []byte
	data    []byte
	hasData bool
}

// prepare builds the stream URL.
func (c *sseClient) prepare() {
	c.retry = 2 * time.Second
	joins := make([]string, len(c.names))
	for i, n := range c.names {
		joins[i] = url.QueryEscape(n)
	}
	c.streamURL = c.base + "/socket/sse?vsn=2.0.0&token=" + url.QueryEscape(c.token) + "&join=" + strings.Join(joins, ",")
}

// run connects and keeps the stream open until ctx is done.
func (c *sseClient) run(ctx context.Context) {
	deadline := time.Now().Add(c.e.cfg.ConnectTimeout)
	failures := 0
	for ctx.Err() == nil {
		if c.connecting() && time.Now().After(deadline) {
			c.markFailed("connect_timeout", "not connected and joined within --connect-timeout")
			return
		}
		err := c.stream(ctx, deadline)
		if ctx.Err() != nil || c.state.Load() == stateFailed {
			return
		}
		wait := c.retry
		if err != nil {
			failures++
			wait = max(wait, backoff(failures))
		} else {
			failures = 0
		}
		if !sleepCtx(ctx, wait) {
			return
		}
		if !c.connecting() {
			c.e.reconnects.Add(1)
		}
	}
}

// permanentError is a refusal that retrying will not change.
type permanentError struct{ kind, msg string }

func (e *permanentError) Error() string { return e.kind + ": " + e.msg }

// stream runs one GET of the stream until it ends. A nil error is a clean
// end (the server's lifetime limit).
func (c *sseClient) stream(ctx context.Context, deadline time.Time) error {
	return c.getEventStream(ctx, deadline, &c.events, eventStreamGet{
		url:    c.streamURL,
		lastID: c.lastID,
		kind:   "sse",
		what:   "GET stream",
		refused: func(status int, kind, msg string) bool {
			if status != http.StatusBadRequest && status != http.StatusForbidden {
				return false
			}
			if c.connecting() {
				c.markFailed(kind, msg)
				return true
			}
			// A resume point refused (expired, foreign, malformed): start
			// a new session, which rejoins.
			c.lastID = c.lastID[:0]
			return false
		},
	}, func() error { return c.read(ctx) })
}

// eventStream is the line reader of an event stream, kept across the
// client's reconnects.
type eventStream struct {
	br   *bufio.Reader
	long []byte // a line longer than br's buffer
}

// readLine returns the next line without its line ending. The slice is
// valid until the next call.
func (s *eventStream) readLine() ([]byte, error) { return readSSELine(s.br, &s.long) }

// eventStreamGet is what differs between the GETs of Sluice's SSE stream
// and Centrifugo's uni_sse stream.
type eventStreamGet struct {
	url    string
	lastID []byte // sent as Last-Event-ID when not empty
	kind   string // the errors table's prefix: "sse", "uni_sse"
	what   string // the request in error messages
	// refused is told of an answer other than 200 (its status, and the
	// kind and message it is counted under) before it is counted; true
	// means the client failed for good and the answer is not counted.
	refused func(status int, kind, msg string) (failed bool)
}

// getEventStream runs one GET of an event stream: it bounds the wait for
// the response headers only (the stream itself may stay idle for as long as
// the server likes), checks the answer, and calls read with the stream on
// s until it ends. A nil error is a clean end (io.EOF from read); other
// errors are counted unless ctx ended.
func (c *client) getEventStream(ctx context.Context, deadline time.Time, s *eventStream, g eventStreamGet, read func() error) error {
	e := c.e
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req, err := http.NewRequestWithContext(sctx, http.MethodGet, g.url, nil)
	if err != nil {
		c.markFailed("bad_request", err.Error())
		return err
	}
	req.Header.Set("Accept", "text/event-stream")
	if len(g.lastID) > 0 {
		req.Header.Set("Last-Event-ID", string(g.lastID))
	}
	limit := e.cfg.ConnectTimeout
	if c.connecting() {
		limit = time.Until(deadline)
	}
	timer := time.AfterFunc(limit, cancel)
	resp, err := c.http.Do(req)
	if !timer.Stop() && err == nil {
		resp.Body.Close()
		err = context.DeadlineExceeded
	}
	if err != nil {
		if ctx.Err() == nil {
			e.errs.add(g.kind+"/"+errorKind(err), err.Error())
		}
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		kind := g.kind + "/http_" + strconv.Itoa(resp.StatusCode)
		msg := fmt.Sprintf("%s: %d %s", g.what, resp.StatusCode, bytes.TrimSpace(body))
		if !g.refused(resp.StatusCode, kind, msg) {
			e.errs.add(kind, msg)
		}
		return &permanentError{kind, msg}
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		msg := g.what + " answered Content-Type " + ct
		e.errs.add(g.kind+"/not_event_stream", msg)
		return errors.New(msg)
	}
	if s.br == nil {
		s.br = bufio.NewReaderSize(resp.Body, sseReadBuffer)
	} else {
		s.br.Reset(resp.Body)
	}
	defer s.br.Reset(nil)
	err = read()
	switch {
	case errors.Is(err, io.EOF):
		return nil
	case ctx.Err() != nil:
		return err
	}
	e.errs.add(g.kind+"/"+errorKind(err), "reading the stream: "+err.Error())
	return err
}

// readSSELine returns the next line of an event stream without its line
// ending, assembling a line longer than br's buffer in *long. The slice is
// valid until the next call.
func readSSELine(br *bufio.Reader, long *[]byte) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		*long = append((*long)[:0], line...)
		for errors.Is(err, bufio.ErrBufferFull) {
			line, err = br.ReadSlice('\n')
			*long = append(*long, line...)
			if len(*long) > maxPayloadBytes*2 {
				return nil, fmt.Errorf("an SSE line longer than %d bytes", maxPayloadBytes*2)
			}
		}
		line = *long
	}
	if err != nil {
		return nil, err
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, nil
}

// read parses events until the stream ends.
func (c *sseClient) read(ctx context.Context) error {
	c.resetEvent()
	for {
		line, err := c.events.readLine()
		if err != nil {
			return err
		}
		if len(line) == 0 {
			c.dispatch(ctx)
			continue
		}
		field, value := line, []byte(nil)
		if k := bytes.IndexByte(line, ':'); k >= 0 {
			field, value = line[:k], line[k+1:]
			if len(value) > 0 && value[0] == ' ' {
				value = value[1:]
			}
		}
		switch string(field) {
		case "": // a comment (padding)
		case "data":
			if c.hasData {
				c.data = append(c.data, '\n')
			}
			c.data = append(c.data, value...)
			c.hasData = true
		case "id":
			c.id = append(c.id[:0], value...)
			c.hasID = true
		case "event":
			c.event = append(c.event[:0], value...)
		case "retry":
			if ms, err := strconv.Atoi(string(value)); err == nil && ms >= 0 {
				c.retry = time.Duration(ms) * time.Millisecond
			}
		}
	}
}

func (c *sseClient) resetEvent() {
	c.event, c.data, c.id = c.event[:0], c.data[:0], c.id[:0]
	c.hasData, c.hasID = false, false
}

// dispatch handles the event read so far.
func (c *sseClient) dispatch(ctx context.Context) {
	defer c.resetEvent()
	if c.hasID {
		c.lastID = append(c.lastID[:0], c.id...)
	}
	if !c.hasData {
		return
	}
	e := c.e
	switch string(c.event) {
	case "", "message":
		c.handleFrame(c.data, time.Now(), "sse")
		c.afterFrames(ctx)
	case "session":
		c.onSession()
	case "heartbeat":
		c.afterFrames(ctx)
	case "session_gone":
		c.lastID = c.lastID[:0]
		e.errs.add("sse/session_gone", string(c.data))
	case "unavailable":
		e.errs.add("sse/unavailable", string(c.data))
	}
}

// onSession handles the session event that starts every stream.
func (c *sseClient) onSession() {
	var s struct {
		Credential string `json:"credential"`
		Post       string `json:"post"`
		Resumed    bool   `json:"resumed"`
		Session    string `json:"session"`
	}
	if err := json.Unmarshal(c.data, &s); err != nil || s.Post == "" || s.Post[0] != '/' || s.Credential == "" {
		c.e.errs.add("bad_frame", fmt.Sprintf("sse: session event %.200s", c.data))
		return
	}
	c.post.Store(&sessionPost{url: c.base + s.Post, credential: s.Credential})
	if s.Resumed {
		return
	}
	// A new session: the server joined our topics (?join=), with join refs
	// "join:<n>" in the order given.
	if c.hadSession && !c.connecting() {
		c.e.errs.add("sse/session_lost", "a resumed stream started a new session (the old one expired): messages in between are lost")
	}
	c.hadSession = true
	c.resetJoins()
	for i := range c.joinRef {
		c.joinRef[i] = "join:" + strconv.Itoa(i+1)
	}
}

// afterFrames rejoins topics the server closed, as phoenix.js does.
func (c *sseClient) afterFrames(ctx context.Context) {
	if !c.rejoinDue() {
		return
	}
	todo := c.pendingRejoins()
	var body []byte
	body = append(body, '[')
	for k, i := range todo {
		if k > 0 {
			body = append(body, ',')
		}
		body = c.joinFrame(body, i)
	}
	body = append(body, ']')
	if err := c.postFrames(ctx, body); err != nil {
		c.e.errs.add("sse/rejoin", err.Error())
	}
}

// postFrames POSTs frames (one frame or a JSON array of frames) to the
// session.
func (c *sseClient) postFrames(ctx context.Context, body []byte) error {
	p := c.post.Load()
	if p == nil {
		return errors.New("no session yet")
	}
	return postJSON(ctx, c.http, p.url, p.credential, "application/json", body)
}

// sessionPost is where an SSE session's frames go, and the credential that
// proves the session (sent in X-Sluice-Session).
type sessionPost struct {
	url, credential string
}

// push sends one frame from a pusher goroutine.
func (c *sseClient) push(ctx context.Context, body []byte) error {
	return c.postFrames(ctx, body)
}

// postJSON POSTs body and checks that the answer is {"status":200}. A
// non-empty credential is sent in X-Sluice-Session (an SSE session's POST).
func postJSON(ctx context.Context, hc *http.Client, u, credential, contentType string, body []byte) error {
	rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("build POST: %w", err)
	}
	req.Header.Set("Content-Type", contentType)
	if credential != "" {
		req.Header.Set("X-Sluice-Session", credential)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return &kindError{kind: errorKind(err), err: err}
	}
	defer resp.Body.Close()
	var buf [256]byte
	n, _ := io.ReadFull(resp.Body, buf[:])
	_, _ = io.Copy(io.Discard, resp.Body)
	status := -1
	var vals [1][]byte
	if objectFields(buf[:n], statusKey, vals[:]) == nil {
		if v, ok := parseInt(vals[0]); ok {
			status = int(v)
		}
	}
	if resp.StatusCode != http.StatusOK || status != http.StatusOK {
		kind := "http_" + strconv.Itoa(resp.StatusCode)
		if resp.StatusCode == http.StatusOK {
			kind = "status_" + strconv.Itoa(status)
		}
		return &kindError{kind: kind, err: fmt.Errorf("POST answered %d %s", resp.StatusCode, bytes.TrimSpace(buf[:n]))}
	}
	return nil
}

var statusKey = []string{"status"}

// kindError is an error with its kind for the errors table.
type kindError struct {
	kind string
	err  error
}

func (e *kindError) Error() string { return e.err.Error() }
func (e *kindError) Unwrap() error { return e.err }

// kindOf returns the kind of an error from postJSON and friends.
func kindOf(err error) string {
	var ke *kindError
	if errors.As(err, &ke) {
		return ke.kind
	}
	return errorKind(err)
}
