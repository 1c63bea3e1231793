package loadgen

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
)

// heartbeatEvery is how often a long-poll client sends a heartbeat, as
// phoenix.js does on its sockets. Polling alone keeps a session alive; the
// heartbeat costs one POST and proves the socket answers.
const heartbeatEvery = 30 * time.Second

// maxPollBody bounds one poll answer.
const maxPollBody = 64 << 20

// lpClient is one client over Phoenix's LongPoll transport: GET opens a
// session (status 410 with a token), a POST of ndjson frames joins, and a
// loop of GETs carrying the latest token receives.
type lpClient struct {
	client
	connectURL string                 // ?vsn=2.0.0&token=<user token>
	tok        string                 // the session token the next poll sends
	session    atomic.Pointer[string] // a token of the current session, for pushes
	lastHB     time.Time

	body   []byte // the last answer's body, reused
	msgBuf []byte // one unescaped message, reused
}

// prepare builds the connect URL.
func (c *lpClient) prepare() {
	c.connectURL = c.base + "/socket/longpoll?vsn=2.0.0&token=" + c.token
}

// sessionURL returns the URL of requests of the session: phoenix.js sends
// the user token and then the session token, the last one being the
// session's.
func (c *lpClient) sessionURL(tok string) string {
	return c.connectURL + "&token=" + tok
}

// run polls until ctx is done.
func (c *lpClient) run(ctx context.Context) {
	e := c.e
	deadline := time.Now().Add(e.cfg.ConnectTimeout)
	failures := 0
	for ctx.Err() == nil {
		if c.connecting() && time.Now().After(deadline) {
			c.markFailed("connect_timeout", "not connected and joined within --connect-timeout")
			return
		}
		var err error
		switch {
		case c.tok == "":
			err = c.open(ctx)
			if err == nil {
				err = c.sendJoins(ctx, c.allTopics())
			}
		case c.rejoinDue():
			err = c.sendJoins(ctx, c.pendingRejoins())
		default:
			err = c.poll(ctx)
		}
		if ctx.Err() != nil || c.state.Load() == stateFailed {
			return
		}
		if err != nil {
			failures++
			if !sleepCtx(ctx, backoff(failures)) {
				return
			}
			continue
		}
		failures = 0
		if !c.connecting() && time.Since(c.lastHB) >= heartbeatEvery {
			c.heartbeat(ctx)
		}
	}
}

func (c *lpClient) allTopics() []int {
	all := make([]int, len(c.topics))
	for i := range all {
		all[i] = i
	}
	return all
}

// envelope is a LongPoll answer, parsed in place.
type envelope struct {
	status   int
	token    []byte
	messages []byte // the raw JSON array
	err      []byte
}

var envelopeKeys = []string{"status", "token", "messages", "error"}

func parseEnvelope(body []byte) (envelope, error) {
	var env envelope
	var vals [4][]byte
	if err := objectFields(body, envelopeKeys, vals[:]); err != nil {
		return env, err
	}
	st, ok := parseInt(vals[0])
	if !ok {
		return env, fmt.Errorf("%w: no integer status", errBadJSON)
	}
	env.status = int(st)
	if vals[1] != nil {
		if env.token, ok = unquote(vals[1]); !ok {
			return env, fmt.Errorf("%w: token is not a plain string", errBadJSON)
		}
	}
	env.messages, env.err = vals[2], vals[3]
	return env, nil
}

// do sends one request and reads the whole answer into c.body.
func (c *lpClient) do(ctx context.Context, method, u string, body []byte) (int, error) {
	rctx, cancel := context.WithTimeout(ctx, c.e.cfg.PollTimeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(rctx, method, u, rd)
	if err != nil {
		return 0, fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/x-ndjson")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if c.body == nil {
		c.body = make([]byte, 0, 512)
	}
	c.body = c.body[:0]
	for {
		if len(c.body) == cap(c.body) {
			if len(c.body) >= maxPollBody {
				return resp.StatusCode, fmt.Errorf("answer larger than %d bytes", maxPollBody)
			}
			c.body = append(c.body, 0)[:len(c.body)]
		}
		n, err := resp.Body.Read(c.body[len(c.body):cap(c.body)])
		c.body = c.body[:len(c.body)+n]
		if errors.Is(err, io.EOF) {
			return resp.StatusCode, nil
		}
		if err != nil {
			return resp.StatusCode, err
		}
	}
}

// request sends one request and parses its envelope, counting errors.
func (c *lpClient) request(ctx context.Context, what, method, u string, body []byte) (envelope, error) {
	e := c.e
	code, err := c.do(ctx, method, u, body)
	if err != nil {
		if ctx.Err() == nil {
			e.errs.add("longpoll/"+errorKind(err), what+": "+err.Error())
		}
		return envelope{}, err
	}
	env, err := parseEnvelope(c.body)
	if err != nil {
		kind := "longpoll/bad_answer"
		if code != http.StatusOK {
			kind = "longpoll/http_" + strconv.Itoa(code)
		}
		e.errs.add(kind, fmt.Sprintf("%s: HTTP %d %.200s", what, code, c.body))
		return env, &kindError{kind: kind, err: err}
	}
	return env, nil
}

// open starts a session.
func (c *lpClient) open(ctx context.Context) error {
	e := c.e
	env, err := c.request(ctx, "open session", http.MethodGet, c.connectURL, nil)
	if err != nil {
		return err
	}
	if env.status != http.StatusGone || len(env.token) == 0 {
		kind := "longpoll/connect_status_" + strconv.Itoa(env.status)
		msg := fmt.Sprintf("open session: %.300s", c.body)
		if env.status == http.StatusForbidden && c.connecting() {
			c.markFailed(kind, msg)
		} else {
			e.errs.add(kind, msg)
		}
		return errors.New(msg)
	}
	c.setSession(string(env.token))
	return nil
}

// setSession adopts a new session: it has no joins yet.
func (c *lpClient) setSession(tok string) {
	c.tok = tok
	c.session.Store(&tok)
	c.lastHB = time.Now()
	c.resetJoins()
}

// sendJoins POSTs phx_join for topics.
func (c *lpClient) sendJoins(ctx context.Context, topics []int) error {
	var body []byte
	for k, i := range topics {
		if k > 0 {
			body = append(body, '\n')
		}
		body = c.joinFrame(body, i)
	}
	return c.post(ctx, "join", body)
}

// post sends frames of the poll goroutine and handles a gone session.
func (c *lpClient) post(ctx context.Context, what string, body []byte) error {
	env, err := c.request(ctx, what, http.MethodPost, c.sessionURL(c.tok), body)
	if err != nil {
		return err
	}
	switch env.status {
	case http.StatusOK:
		return nil
	case http.StatusGone:
		c.e.errs.add("longpoll/session_gone", what+": the session is gone; opening a new one")
		c.tok = ""
	default:
		c.e.errs.add("longpoll/"+what+"_status_"+strconv.Itoa(env.status), fmt.Sprintf("%s: %.300s", what, c.body))
	}
	return fmt.Errorf("%s: status %d", what, env.status)
}

// heartbeat sends [null, ref, "phoenix", "heartbeat", {}].
func (c *lpClient) heartbeat(ctx context.Context) {
	c.lastHB = time.Now()
	body := append([]byte(`[null,"`), c.nextRef('h')...)
	body = append(body, `","phoenix","heartbeat",{}]`...)
	_ = c.post(ctx, "heartbeat", body)
}

// poll sends one GET and handles what it brings.
func (c *lpClient) poll(ctx context.Context) error {
	e := c.e
	env, err := c.request(ctx, "poll", http.MethodGet, c.sessionURL(c.tok), nil)
	if err != nil {
		return err
	}
	now := time.Now()
	e.roundTrips.Add(1)
	if env.status == http.StatusNoContent {
		e.emptyPolls.Add(1)
	}
	switch env.status {
	case http.StatusOK, http.StatusNoContent:
		if len(env.token) == 0 {
			e.errs.add("longpoll/bad_answer", fmt.Sprintf("poll: no token: %.200s", c.body))
			return errors.New("poll answer without a token")
		}
		if err := c.messages(env.messages, now); err != nil {
			e.errs.add("bad_frame", fmt.Sprintf("longpoll: messages: %v", err))
		}
		c.tok = string(env.token)
		if c.connecting() && c.nJoined == len(c.topics) {
			c.markConnected()
		}
		return nil
	case http.StatusGone:
		// The session expired: this answer opened a new one, which the
		// client must join again. What was sent meanwhile is lost.
		if len(env.token) == 0 {
			c.tok = ""
		} else {
			c.setSession(string(env.token))
			c.rejoinAll()
		}
		e.errs.add("longpoll/session_gone", "poll: the session expired and a new one started")
		return nil
	case http.StatusForbidden:
		c.tok = ""
		e.errs.add("longpoll/poll_status_403", fmt.Sprintf("poll: %.300s", c.body))
		return errors.New("poll refused")
	default:
		e.errs.add("longpoll/poll_status_"+strconv.Itoa(env.status), fmt.Sprintf("poll: %.300s", c.body))
		return fmt.Errorf("poll: status %d", env.status)
	}
}

// rejoinAll marks every topic for joining at once.
func (c *lpClient) rejoinAll() {
	for i := range c.rejoin {
		c.rejoin[i] = true
	}
	c.rejoinAt = time.Time{}
}

// messages handles the "messages" array: each element is a JSON string
// holding one serialized frame.
func (c *lpClient) messages(arr []byte, now time.Time) error {
	if arr == nil {
		return nil
	}
	i := skipWS(arr, 0)
	if i >= len(arr) || arr[i] != '[' {
		return fmt.Errorf("%w: messages is not an array", errBadJSON)
	}
	i = skipWS(arr, i+1)
	if i < len(arr) && arr[i] == ']' {
		return nil
	}
	for {
		raw, escaped, next, err := scanString(arr, skipWS(arr, i))
		if err != nil {
			return err
		}
		msg := raw
		if escaped {
			if c.msgBuf, err = appendUnescaped(c.msgBuf[:0], raw); err != nil {
				return err
			}
			msg = c.msgBuf
		}
		c.handleFrame(msg, now, "longpoll")
		i = skipWS(arr, next)
		switch {
		case i < len(arr) && arr[i] == ',':
			i++
		case i < len(arr) && arr[i] == ']':
			return nil
		default:
			return fmt.Errorf("%w: expected ',' or ']' in messages", errBadJSON)
		}
	}
}

// push POSTs one frame from a pusher goroutine.
func (c *lpClient) push(ctx context.Context, body []byte) error {
	tok := c.session.Load()
	if tok == nil {
		return errors.New("no session yet")
	}
	return postJSON(ctx, c.http, c.sessionURL(*tok), "", "application/json", body)
}
