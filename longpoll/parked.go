package longpoll

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/sluicegw/sluice/gateway"
	"github.com/sluicegw/sluice/internal/handback"
	"github.com/sluicegw/sluice/internal/idlepoll"
)

// A parked poll is a waiting long-poll whose connection was taken from
// net/http (Hijack) once a first read found nothing for it, so that while it
// waits it holds no handler goroutine and no net/http buffers: only its
// connection, its subscription, a timer for the window and the headers of
// its answer, serialized. Its connection waits in the process's epoll set
// (internal/idlepoll, on Linux), which notices the client leaving or
// sending its next request without a goroutine; elsewhere, or on a
// connection that is not a plain socket, a goroutine blocked on a one-byte
// read does. A wake-up, the window's end and a drain each run a short
// task, one at a time per poll; the one that answers writes the whole
// HTTP/1.1 response as net/http would have (parkedAnswer), then gives the
// connection back to the server (Transport.ParkWith) for the client's next
// request: phoenix.js reuses its keep-alive connection.
//
// Polls that cannot be hijacked (HTTP/2, HTTP/1.0, a request with a body)
// wait in their handler, as every poll does without Transport.ParkWith.
type parkedPoll struct {
	t    *Transport
	conn net.Conn
	sub  *gateway.Subscription
	tok  gateway.SessionToken
	// header holds the answer's headers as the handler and the middleware
	// set them (CORS, caching, request id), serialized as net/http writes
	// them: a few hundred bytes, where a cloned map is three times that.
	header []byte
	// closeAfter: the request said Connection: close.
	closeAfter bool
	// query and userToken start a new session if this one ends while the
	// poll waits, as the handler would (connect).
	query     string
	userToken string

	mu       sync.Mutex // held by the running task
	answered bool
	// queued: a delivery task is scheduled and has not started.
	queued atomic.Bool
	window *time.Timer
	// watchDone: the watcher's read returned (with the first byte of the
	// client's next request in early, or the client gone), or there is no
	// watcher because early held the next request at parking.
	watchDone bool
	early     []byte
	// raw and wait, when set, watch the connection in the process's epoll
	// set instead of the watcher goroutine; pending: its wake-up found the
	// client's next request waiting, unread; idle closes the connection if
	// none comes after the answer (the server's idle timeout).
	raw     syscall.RawConn
	wait    idlepoll.Waiter
	pending bool
	idle    *time.Timer
}

// Bounds of a parked poll's work.
const (
	// storeTimeout bounds a task's calls to the stores.
	storeTimeout = 10 * time.Second
	// writeTimeout bounds the write of an answer.
	writeTimeout = 10 * time.Second
	// chunkingSize is net/http's bufferBeforeChunkingSize: a handler's
	// answer larger than this goes out chunked, a smaller one with a
	// Content-Length. A parked answer does the same, byte for byte.
	chunkingSize = 2048
)

// writeBuffers holds the buffers answers are built in: a parked poll holds
// none while it waits.
var writeBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// canPark reports whether a poll may wait parked: HTTP/1.1, no body (the
// next bytes on the connection are the next request), a server that takes
// connections back, and a writer that can be hijacked.
func (t *Transport) canPark(c echo.Context) bool {
	r := c.Request()
	if t.handback == nil || r.ProtoMajor != 1 || r.ProtoMinor != 1 || r.ContentLength != 0 || len(r.TransferEncoding) > 0 {
		return false
	}
	var w http.ResponseWriter = c.Response()
	for {
		if _, ok := w.(http.Hijacker); ok {
			return true
		}
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return false
		}
		w = u.Unwrap()
	}
}

// pollParked answers a poll of tok's session at once if something is
// ready, and else parks it. ctx carries the request's user.
func (t *Transport) pollParked(c echo.Context, ctx context.Context, tok gateway.SessionToken, info gateway.ConnectInfo) (done bool, err error) {
	r := c.Request()
	obs := t.gw.Observer()
	p := &parkedPoll{t: t, tok: tok, closeAfter: r.Close, query: r.URL.RawQuery, userToken: info.Token}
	// Held until the poll is parked: a wake-up's task waits for it, and
	// then finds the poll parked or answered.
	p.mu.Lock()
	defer p.mu.Unlock()
	obs.Open(transportName, 1)
	sub, err := t.gw.PollFunc(ctx, tok, t.cfg.Window, p.wake)
	var d *gateway.Delivery
	if err == nil {
		// The first read of everything, as Poll's.
		if d, err = sub.Ready(ctx); err != nil || len(d.Frames) > 0 {
			sub.Release()
		}
	}
	if err != nil || len(d.Frames) > 0 {
		p.answered = true
		obs.Open(transportName, -1)
		if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
			return true, nil // the client went away
		}
		return t.sendPolled(c, tok, d, err)
	}
	conn, brw, err := http.NewResponseController(c.Response()).Hijack()
	if err != nil {
		// Not hijackable after all: wait here.
		sub.Release()
		p.answered = true
		d, err = t.gw.Poll(ctx, tok, t.cfg.Window)
		obs.Open(transportName, -1)
		if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
			return true, nil
		}
		return t.sendPolled(c, tok, d, err)
	}
	// Bytes of the client's next request that net/http read already: they
	// are the next request's, read first when the connection goes back.
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		p.early = bytes.Clone(b)
	}
	// net/http's deadlines (a body read's, the header's) are no longer
	// this connection's.
	_ = conn.SetDeadline(time.Time{})
	p.conn, p.sub = conn, sub
	p.header = serializeHeader(c.Response().Header())
	// echo pools its contexts, and a pooled one would keep this request's
	// net/http response, and through it the connection's buffers (10 KiB),
	// until reused: it keeps a writer of nothing instead.
	c.Response().Writer = handback.HijackedWriter{}
	if len(p.early) == 0 {
		p.watch(conn)
	} else {
		// The client sent its next request already (pipelining): it is
		// not read before this answer, so a leaving client is noticed when
		// the answer is written, as net/http does.
		p.watchDone = true
	}
	t.parked.Add(p)
	p.window = time.AfterFunc(t.cfg.Window, p.windowEnd)
	select {
	case <-t.gw.Draining():
		// A drain that began before the poll was in t.parked did not see it.
		p.answerLocked(&gateway.Delivery{Token: sub.Token()}, nil)
	default:
		// What a wake-up announced while the poll was being parked.
		p.deliverLocked()
	}
	return true, nil
}

// wake is the subscription's wake-up: schedule a delivery.
func (p *parkedPoll) wake() {
	if p.queued.CompareAndSwap(false, true) {
		go p.deliver()
	}
}

func (p *parkedPoll) deliver() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.queued.Store(false)
	p.deliverLocked()
}

// deliverLocked answers with what a wake-up announced, if it was for this
// client.
func (p *parkedPoll) deliverLocked() {
	if p.answered {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	d, err := p.sub.Ready(ctx)
	if err != nil || len(d.Frames) > 0 {
		p.answerLocked(d, err)
	}
}

// windowEnd answers at the end of the window: a last look at the store,
// with a fresh session, since a wake-up from another instance can be lost
// (as Poll's).
func (p *parkedPoll) windowEnd() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.answered {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	// A Check with no wait left reloads the session and reads everything;
	// the deadline the poll's start wrote (the window plus the session
	// timeout) stands.
	d, err := p.sub.Check(ctx, 0)
	p.answerLocked(d, err)
}

// drain answers at once, with what the poll has: its client continues on
// another instance.
func (p *parkedPoll) drain() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.answered {
		p.answerLocked(&gateway.Delivery{Token: p.sub.Token()}, nil)
	}
}

// drainParked answers every parked poll.
func (t *Transport) drainParked() {
	for _, p := range t.parked.Snapshot() {
		p.drain()
	}
}

// watch starts watching conn for the client leaving or its next request:
// in the process's epoll set if conn is a plain socket there is one for,
// else on a goroutine of its own (watchClient).
func (p *parkedPoll) watch(conn net.Conn) {
	if sc, ok := conn.(syscall.Conn); ok {
		if poller := idlepoll.Shared(p.t.cfg.Logger); poller != nil {
			if raw, err := sc.SyscallConn(); err == nil {
				poller.Add(&p.wait, p.readable)
				p.raw = raw
				if p.arm() {
					return
				}
				p.wait.Remove()
				p.raw = nil
			}
		}
	}
	go p.watchClient(conn)
}

// arm asks the poller for one wake-up when the connection becomes
// readable; false if it could not (the connection is closed).
func (p *parkedPoll) arm() bool {
	var armErr error
	err := p.raw.Control(func(fd uintptr) { armErr = p.wait.Arm(int(fd)) })
	return err == nil && armErr == nil
}

// readable is the poller's wake-up; it must not block the poller.
func (p *parkedPoll) readable() { go p.checkReadable() }

// checkReadable does what watchClient does once its read returns, having
// peeked rather than read: the client's next request stays on the
// connection for the server.
func (p *parkedPoll) checkReadable() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conn == nil || p.watchDone {
		return // closed or given back meanwhile
	}
	state := idlepoll.Peek(p.raw)
	if state == idlepoll.Nothing {
		if p.arm() {
			return // woken for nothing
		}
		state = idlepoll.Closed
	}
	p.watchDone = true
	p.wait.Remove()
	if p.idle != nil {
		p.idle.Stop()
	}
	if state == idlepoll.Data {
		p.pending = true
		if p.answered {
			p.giveBack()
		}
		// Else the next request began early: the answer gives it back.
		return
	}
	if !p.answered {
		// The client left: as Poll does, its session gets the session
		// timeout from now.
		p.release()
		p.sub.Close()
	}
	_ = p.conn.Close()
	p.conn = nil
}

// idleEnd closes an answered poll's connection on which no next request
// began within the idle timeout.
func (p *parkedPoll) idleEnd() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conn == nil || p.watchDone {
		return
	}
	p.watchDone = true
	p.wait.Remove()
	_ = p.conn.Close()
	p.conn = nil
}

// watchClient reads one byte: before the answer, to notice the client
// leaving (or keep the first byte of a request it sent early); after it,
// while the connection waits for the client's next poll, to give the
// connection back when that begins (or close it after the idle timeout).
//
// It is given conn rather than reading p.conn, which the answer may clear
// before this goroutine first runs.
func (p *parkedPoll) watchClient(conn net.Conn) {
	var b [1]byte
	n, _ := conn.Read(b[:])
	p.mu.Lock()
	defer p.mu.Unlock()
	p.watchDone = true
	if n > 0 {
		p.early = append(p.early, b[0])
	}
	if !p.answered {
		if n > 0 {
			return // the next request began early: the answer gives it back
		}
		// The client left: as Poll does, its session gets the session
		// timeout from now.
		p.release()
		p.sub.Close()
		_ = conn.Close()
		p.conn = nil
		return
	}
	if p.conn == nil {
		return // closed by the answer
	}
	if n > 0 {
		p.giveBack()
		return
	}
	_ = p.conn.Close() // gone, or idle for the idle timeout
	p.conn = nil
}

// release ends the poll's waiting: its timer, its place in t.parked and
// its count.
func (p *parkedPoll) release() {
	p.answered = true
	p.window.Stop()
	p.t.parked.Remove(p)
	p.t.gw.Observer().Open(transportName, -1)
}

// answerLocked answers the poll with d or err, then gives the connection
// back for the client's next request, or closes it.
func (p *parkedPoll) answerLocked(d *gateway.Delivery, err error) {
	p.release()
	p.sub.Release()
	t := p.t
	a, ok := t.polled(p.tok, d, err)
	if !ok {
		// The session ended while the poll waited: a new one, as the
		// handler does.
		ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
		q, _ := url.ParseQuery(p.query)
		a = t.connect(ctx, gateway.ConnectInfo{Params: q, Token: p.userToken, Vsn: q.Get("vsn")}, "the session expired or ended", http.StatusGone)
		cancel()
	}
	select {
	case <-t.gw.Draining():
		a.close = true // as net/http answers once keep-alives are off
	default:
	}
	closeConn := a.close || p.closeAfter
	buf := writeBuffers.Get().(*bytes.Buffer)
	defer writeBuffers.Put(buf)
	buf.Reset()
	werr := p.writeAnswer(buf, a, closeConn)
	if werr == nil && d != nil && err == nil {
		d.Observe(t.gw.Observer(), transportName)
	}
	p.header = nil
	if werr != nil || closeConn {
		_ = p.conn.Close() // which ends the watcher
		p.conn = nil
		p.wait.Remove()
		return
	}
	if !p.watchDone {
		// The watcher gives the connection back when the next request
		// begins, or closes it once idle for the server's idle timeout.
		if p.raw != nil {
			p.idle = time.AfterFunc(t.idleTimeout, p.idleEnd)
		} else {
			_ = p.conn.SetReadDeadline(time.Now().Add(t.idleTimeout))
		}
		return
	}
	if len(p.early) == 0 && !p.pending {
		_ = p.conn.Close() // the client left as it was answered
		p.conn = nil
		return
	}
	p.giveBack()
}

// giveBack hands the connection, and what was read of the next request,
// back to the server.
func (p *parkedPoll) giveBack() {
	_ = p.conn.SetDeadline(time.Time{})
	conn, early := p.conn, p.early
	p.conn, p.early = nil, nil
	// On its own goroutine: Return waits for the server's Accept, and a
	// drain waits for this poll's lock.
	go p.t.handback(conn, early)
}

// writeAnswer writes a as the handler's answer would have been written by
// net/http: status line, the handler's headers sorted, Date, then
// Content-Length (or chunked encoding for bodies over chunkingSize), and
// Connection: close when closing.
func (p *parkedPoll) writeAnswer(buf *bytes.Buffer, a answer, closeConn bool) error {
	body, err := encodeReply(a.body)
	if err != nil {
		p.t.cfg.Logger.Error("longpoll: encode answer", "session", gateway.LogSession(p.tok.SessionID), "err", err)
		return err
	}
	buf.WriteString("HTTP/1.1 ")
	var num [20]byte
	buf.Write(strconv.AppendInt(num[:0], int64(a.status), 10))
	buf.WriteByte(' ')
	buf.WriteString(http.StatusText(a.status))
	buf.WriteString("\r\n")
	writeHeader(buf, p.header, a.retryAfter)
	var date [29]byte
	buf.WriteString("Date: ")
	buf.Write(time.Now().UTC().AppendFormat(date[:0], http.TimeFormat))
	buf.WriteString("\r\n")
	chunked := len(body) > chunkingSize
	if !chunked {
		buf.WriteString("Content-Length: ")
		buf.Write(strconv.AppendInt(num[:0], int64(len(body)), 10))
		buf.WriteString("\r\n")
	}
	if closeConn {
		buf.WriteString("Connection: close\r\n")
	}
	if chunked {
		buf.WriteString("Transfer-Encoding: chunked\r\n\r\n")
		buf.Write(strconv.AppendInt(num[:0], int64(len(body)), 16))
		buf.WriteString("\r\n")
		buf.Write(body)
		buf.WriteString("\r\n0\r\n\r\n")
	} else {
		buf.WriteString("\r\n")
		buf.Write(body)
	}
	_ = p.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	_, err = p.conn.Write(buf.Bytes())
	return err
}

// serializeHeader returns h, with the answer's Content-Type, as net/http
// writes a handler's headers: sorted by key.
func serializeHeader(h http.Header) []byte {
	h.Set("Content-Type", jsonType)
	buf := writeBuffers.Get().(*bytes.Buffer)
	defer writeBuffers.Put(buf)
	buf.Reset()
	_ = h.Write(buf)
	return bytes.Clone(buf.Bytes())
}

// retryAfterLine is the header line of a transient failure's answer.
const retryAfterLine = "Retry-After: 1\r\n"

// writeHeader writes the serialized header hdr, with Retry-After: 1 in its
// sorted place if retryAfter (as setting it in the map would).
func writeHeader(buf *bytes.Buffer, hdr []byte, retryAfter bool) {
	if !retryAfter {
		buf.Write(hdr)
		return
	}
	rest := hdr
	for len(rest) > 0 {
		key, _, _ := bytes.Cut(rest, []byte(":"))
		if string(key) >= "Retry-After" {
			break
		}
		_, rest, _ = bytes.Cut(rest, []byte("\r\n"))
	}
	buf.Write(hdr[:len(hdr)-len(rest)])
	buf.WriteString(retryAfterLine)
	if bytes.HasPrefix(rest, []byte("Retry-After:")) {
		// Set replaces: the handler's own Retry-After goes.
		_, rest, _ = bytes.Cut(rest, []byte("\r\n"))
	}
	buf.Write(rest)
}
