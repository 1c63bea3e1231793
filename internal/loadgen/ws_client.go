package loadgen

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gws "github.com/gorilla/websocket"
)

// wsBuffer is the size of a WebSocket client's read and write buffers:
// Sluice's frames are a few hundred bytes, a larger one is read in steps.
const wsBuffer = 1024

// wsWriteTimeout bounds one write of a WebSocket client.
const wsWriteTimeout = 10 * time.Second

// wsClient is one client over Phoenix's WebSocket transport, as phoenix.js
// uses it: one connection, its topics joined by phx_join frames, a
// heartbeat every 30 s, frames pushed as text messages; after the
// connection ends, a new one (a new session) that joins again.
type wsClient struct {
	client
	url    string
	dialer *gws.Dialer

	// conn is the current connection; writes to it are serialized by mu
	// (the reader goroutine's joins, pushers, the heartbeat).
	mu   sync.Mutex
	conn *gws.Conn
	beat *time.Timer // the heartbeat of conn
	// heartbeats numbers the heartbeats (refs "h<n>"), sent by a timer.
	heartbeats atomic.Int64
}

// prepare builds the connect URL and the dialer.
func (c *wsClient) prepare() {
	c.url = "ws" + strings.TrimPrefix(c.base, "http") + "/socket/websocket?vsn=2.0.0&token=" + c.token
	nd := c.e.pool.dialer(c.idx)
	c.dialer = &gws.Dialer{
		NetDialContext:   nd.DialContext,
		HandshakeTimeout: c.e.cfg.ConnectTimeout,
		ReadBufferSize:   wsBuffer,
		WriteBufferSize:  wsBuffer,
	}
}

// run connects, joins and reads until ctx is done, reconnecting after a
// connection ends.
func (c *wsClient) run(ctx context.Context) {
	e := c.e
	deadline := time.Now().Add(e.cfg.ConnectTimeout)
	failures := 0
	for ctx.Err() == nil {
		if c.connecting() && time.Now().After(deadline) {
			c.markFailed("connect_timeout", "not connected and joined within --connect-timeout")
			return
		}
		err := c.session(ctx, deadline)
		if ctx.Err() != nil || c.state.Load() == stateFailed {
			return
		}
		if err != nil {
			failures++
		}
		if !sleepCtx(ctx, backoff(max(failures, 1))) {
			return
		}
		if !c.connecting() {
			c.e.reconnects.Add(1)
		}
	}
}

// session runs one connection until it ends.
func (c *wsClient) session(ctx context.Context, deadline time.Time) error {
	e := c.e
	dctx, cancel := context.WithDeadline(ctx, deadline)
	if !c.connecting() {
		dctx, cancel = context.WithTimeout(ctx, e.cfg.ConnectTimeout)
	}
	conn, resp, err := c.dialer.DialContext(dctx, c.url, nil)
	cancel()
	if err != nil {
		if resp != nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			resp.Body.Close()
			kind := "websocket/http_" + strconv.Itoa(resp.StatusCode)
			msg := fmt.Sprintf("upgrade: %d %s", resp.StatusCode, bytes.TrimSpace(body))
			if resp.StatusCode == http.StatusForbidden && c.connecting() {
				c.markFailed(kind, msg)
				return &permanentError{kind, msg}
			}
			e.errs.add(kind, msg)
			return err
		}
		if ctx.Err() == nil {
			e.errs.add("websocket/"+errorKind(err), err.Error())
		}
		return err
	}
	c.mu.Lock()
	c.conn = conn
	c.beat = time.AfterFunc(heartbeatEvery, c.heartbeat)
	c.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { _ = conn.NetConn().Close() })
	defer func() {
		stop()
		c.mu.Lock()
		c.beat.Stop()
		c.conn, c.beat = nil, nil
		c.mu.Unlock()
		_ = conn.Close()
	}()
	// A new connection is a new session: join everything.
	c.resetJoins()
	if err := c.sendJoins(c.allTopics()); err != nil {
		return err
	}
	for {
		_, data, err := conn.ReadMessage()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ce *gws.CloseError
			if errors.As(err, &ce) {
				e.errs.add("websocket/close_"+strconv.Itoa(ce.Code), ce.Error())
			} else {
				e.errs.add("websocket/"+errorKind(err), "reading: "+err.Error())
			}
			return err
		}
		c.handleFrame(data, time.Now(), "websocket")
		if c.rejoinDue() {
			if err := c.sendJoins(c.pendingRejoins()); err != nil {
				return err
			}
		}
	}
}

func (c *wsClient) allTopics() []int {
	all := make([]int, len(c.topics))
	for i := range all {
		all[i] = i
	}
	return all
}

// sendJoins sends a phx_join frame for each topic (on the reader goroutine).
func (c *wsClient) sendJoins(topics []int) error {
	for _, i := range topics {
		if err := c.write(context.Background(), c.joinFrame(nil, i)); err != nil {
			return err
		}
	}
	return nil
}

// heartbeat sends phoenix.js's heartbeat every heartbeatEvery.
func (c *wsClient) heartbeat() {
	ref := "h" + strconv.FormatInt(c.heartbeats.Add(1), 10)
	_ = c.write(context.Background(), []byte(`[null,"`+ref+`","phoenix","heartbeat",{}]`))
	c.mu.Lock()
	if c.beat != nil {
		c.beat.Reset(heartbeatEvery)
	}
	c.mu.Unlock()
}

// write sends one frame as a text message.
func (c *wsClient) write(_ context.Context, frame []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return errors.New("not connected")
	}
	_ = c.conn.SetWriteDeadline(time.Now().Add(wsWriteTimeout))
	if err := c.conn.WriteMessage(gws.TextMessage, frame); err != nil {
		return &kindError{kind: errorKind(err), err: err}
	}
	return nil
}

// push sends one frame from a pusher goroutine.
func (c *wsClient) push(ctx context.Context, body []byte) error { return c.write(ctx, body) }

// dialer returns the net.Dialer of the i-th user of the pool: its loopback
// source address.
func (p *dialPool) dialer(i int) *net.Dialer { return p.dialers[i%len(p.dialers)] }
