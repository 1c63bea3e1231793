package loadgen

import (
	"bytes"
	"context"
	"fmt"
	"net/url"
	"strconv"
	"time"
)

// cfClient is one client of Centrifugo's unidirectional SSE transport
// (uni_sse): a GET of /connection/uni_sse whose cf_connect parameter
// carries the connect request, {"token":JWT,"subs":{"<channel>":{}}}, and
// whose stream carries one JSON push per data line: the connect reply
// {"connect":{...}}, publications {"channel":...,"pub":{"data":...}},
// pings {} and a final {"disconnect":{...}}. A stream that ends is
// reconnected with a new connect (no recovery: what was published in
// between is missed, and counted so).
type cfClient struct {
	client
	streamURL string

	events eventStream
	data   []byte
}

// prepare builds the stream URL with the connect request.
func (c *cfClient) prepare() {
	var req []byte
	req = append(req, `{"token":`...)
	req = strconv.AppendQuote(req, c.token)
	req = append(req, `,"subs":{`...)
	for i, n := range c.names {
		if i > 0 {
			req = append(req, ',')
		}
		req = strconv.AppendQuote(req, n)
		req = append(req, ":{}"...)
	}
	req = append(req, "}}"...)
	c.streamURL = c.base + "/connection/uni_sse?cf_connect=" + url.QueryEscape(string(req))
}

// run connects and keeps the stream open until ctx is done.
func (c *cfClient) run(ctx context.Context) {
	deadline := time.Now().Add(c.e.cfg.ConnectTimeout)
	failures := 0
	for ctx.Err() == nil {
		if c.connecting() && time.Now().After(deadline) {
			c.markFailed("connect_timeout", "not connected and subscribed within --connect-timeout")
			return
		}
		err := c.stream(ctx, deadline)
		if ctx.Err() != nil || c.state.Load() == stateFailed {
			return
		}
		failures++
		if err == nil {
			failures = 1
		}
		if !sleepCtx(ctx, backoff(failures)) {
			return
		}
		if !c.connecting() {
			c.e.reconnects.Add(1)
		}
	}
}

// stream runs one GET of the stream until it ends.
func (c *cfClient) stream(ctx context.Context, deadline time.Time) error {
	return c.getEventStream(ctx, deadline, &c.events, eventStreamGet{
		url:  c.streamURL,
		kind: "uni_sse",
		what: "GET uni_sse",
		refused: func(status int, kind, msg string) bool {
			if status/100 == 4 && c.connecting() {
				c.markFailed(kind, msg)
			}
			return false
		},
	}, func() error {
		// A new connection has no subscriptions until its connect reply says so.
		c.resetJoins()
		return c.read()
	})
}

// read parses events until the stream ends: each event's data is one push.
func (c *cfClient) read() error {
	c.data = c.data[:0]
	hasData := false
	for {
		line, err := c.events.readLine()
		if err != nil {
			return err
		}
		if len(line) == 0 {
			if hasData {
				c.handlePush(c.data, time.Now())
			}
			c.data, hasData = c.data[:0], false
			continue
		}
		value, ok := bytes.CutPrefix(line, []byte("data:"))
		if !ok {
			continue // comments, id, event, retry: uni_sse's pushes are all in data
		}
		value = bytes.TrimPrefix(value, []byte(" "))
		if hasData {
			c.data = append(c.data, '\n')
		}
		c.data = append(c.data, value...)
		hasData = true
	}
}

var cfPushKeys = []string{"push", "connect", "channel", "pub", "disconnect", "unsubscribe"}

// cfPush is one push of Centrifugo's protocol, its parts pointing into the
// data it was parsed from; strings keep their quotes.
type cfPush struct {
	connect, channel, pub, disconnect, unsubscribe []byte
}

// parseCFPush reads one uni_sse push. A push wrapped as {"push":{...}} (the
// bidirectional protocol's form) is unwrapped.
func parseCFPush(data []byte) (cfPush, error) {
	var p cfPush
	var vals [6][]byte
	if err := objectFields(data, cfPushKeys, vals[:]); err != nil {
		return p, err
	}
	if vals[0] != nil {
		if err := objectFields(vals[0], cfPushKeys, vals[:]); err != nil {
			return p, err
		}
	}
	p.connect, p.channel, p.pub, p.disconnect, p.unsubscribe = vals[1], vals[2], vals[3], vals[4], vals[5]
	return p, nil
}

var (
	cfSubsKey = []string{"subs"}
	cfDataKey = []string{"data"}
)

// handlePush handles one push.
func (c *cfClient) handlePush(data []byte, now time.Time) {
	e := c.e
	p, err := parseCFPush(data)
	if err != nil {
		e.errs.add("bad_frame", fmt.Sprintf("uni_sse: %v: %.200s", err, data))
		return
	}
	switch {
	case p.connect != nil:
		c.onConnect(p.connect)
	case p.pub != nil:
		ch, ok := unquote(p.channel)
		if !ok {
			e.errs.add("bad_frame", fmt.Sprintf("uni_sse: publication without a plain channel: %.200s", data))
			return
		}
		var vals [1][]byte
		if err := objectFields(p.pub, cfDataKey, vals[:]); err != nil || vals[0] == nil || vals[0][0] != '{' {
			e.errs.add("bad_frame", fmt.Sprintf("uni_sse: publication without object data: %.200s", data))
			return
		}
		c.onMessage(frame{topic: ch, payload: vals[0]}, now)
	case p.disconnect != nil:
		msg := fmt.Sprintf("disconnect: %.200s", p.disconnect)
		if c.connecting() {
			c.markFailed("disconnect", msg)
			return
		}
		e.errs.add("uni_sse/disconnect", msg)
	case p.unsubscribe != nil:
		e.errs.add("uni_sse/unsubscribe", fmt.Sprintf("%s: %.200s", p.channel, p.unsubscribe))
	default:
		// {} is a ping; joins, leaves and others are not measured.
	}
}

// onConnect handles the connect reply: the client counts as connected once
// the reply lists every channel it asked for among its subscriptions.
func (c *cfClient) onConnect(reply []byte) {
	var vals [1][]byte
	if err := objectFields(reply, cfSubsKey, vals[:]); err != nil {
		c.e.errs.add("bad_frame", fmt.Sprintf("uni_sse: connect reply: %v", err))
		return
	}
	c.resetJoins()
	if vals[0] != nil {
		names := make([][]byte, 0, len(c.names))
		if err := objectKeys(vals[0], &names); err != nil {
			c.e.errs.add("bad_frame", fmt.Sprintf("uni_sse: connect reply subs: %v", err))
			return
		}
		for _, n := range names {
			if i := c.topicIndex(n); i >= 0 && !c.joined[i] {
				c.joined[i] = true
				c.nJoined++
			}
		}
	}
	if c.nJoined < len(c.topics) {
		msg := fmt.Sprintf("connect reply subscribes %d of %d channels: %.200s", c.nJoined, len(c.topics), reply)
		if c.connecting() {
			c.markFailed("subscribe_refused", msg)
			return
		}
		c.e.errs.add("uni_sse/subscribe_refused", msg)
		return
	}
	if !c.connecting() {
		c.e.rejoins.Add(int64(c.nJoined))
	}
	c.markConnected()
}

// objectKeys appends the raw keys (without quotes) of the JSON object obj.
func objectKeys(obj []byte, keys *[][]byte) error {
	return objectMembers(obj, func(key, _ []byte) { *keys = append(*keys, key) })
}
