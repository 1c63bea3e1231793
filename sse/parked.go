package sse

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluicegw/sluice/gateway"
)

// A parked stream is an SSE stream whose connection was taken from net/http
// (Hijack) once its opening was written, so that while it waits it holds no
// handler goroutine, no net/http buffers and no write buffer: only its
// connection, its subscription, two timers and a reader goroutine blocked
// on a one-byte read (which notices the client leaving). A wake-up, the
// heartbeat and the end each run a short task; one runs at a time per
// stream. The response goes on as HTTP/1.1 chunked encoding, as net/http
// started it.
//
// Hijacking is not possible over HTTP/2; such streams keep the goroutine.
type parked struct {
	t    *Transport
	conn net.Conn
	sub  *gateway.Subscription
	// session is the session id, for messages.
	session string

	mu    sync.Mutex // held by the running task
	ended bool
	// queued: a delivery task is scheduled and has not started.
	queued atomic.Bool
	beat   *time.Timer
	life   *time.Timer
	// lastWrite is when the stream last wrote, for the heartbeat event;
	// lastCheck when it last ran the subscription's Check.
	lastWrite time.Time
	lastCheck time.Time
	// deadline is the connection's write deadline, moved once half spent.
	deadline time.Time
}

// storeTimeout bounds a task's calls to the stores.
const storeTimeout = 10 * time.Second

// writeBuffers holds the buffers tasks build their writes in: a parked
// stream holds none while it waits.
var writeBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// park hands the stream to a parked task set, and reports false if the
// connection cannot be hijacked (the caller then serves the stream itself).
// On true, the stream's counters are the parked stream's to release.
// opened is the session ConnectAndHandle made (zero on a resume), tok the
// stream's token.
func (t *Transport) park(w http.ResponseWriter, opened gateway.Opened, tok gateway.SessionToken, lifetime time.Duration) bool {
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return false
	}
	// net/http flushed the headers and the opening; its buffers go: the
	// client sends nothing more on this connection (anything it did is
	// read and dropped by watchClient).
	_ = brw.Writer.Flush()
	brw = nil
	now := time.Now()
	p := &parked{t: t, conn: conn, session: tok.SessionID, lastWrite: now, lastCheck: now}
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	opened.Token = tok
	sub, err := t.gw.SubscribeOpened(ctx, opened, t.cfg.Heartbeat, p.wake)
	if err != nil {
		p.mu.Lock()
		p.fail(err)
		p.mu.Unlock()
		return true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sub = sub
	t.parkedMu.Lock()
	t.parked[p] = struct{}{}
	t.parkedMu.Unlock()
	p.beat = time.AfterFunc(t.cfg.Heartbeat, p.heartbeat)
	p.life = time.AfterFunc(lifetime, p.expire)
	go p.watchClient()
	// What arrived since the opening: the first read of everything.
	p.deliverLocked()
	return true
}

// wake is the subscription's wake-up: schedule a delivery.
func (p *parked) wake() {
	if p.queued.CompareAndSwap(false, true) {
		go p.deliver()
	}
}

func (p *parked) deliver() {
	p.mu.Lock()
	defer p.mu.Unlock()
	// Cleared only once running: while a task waits for the lock (another
	// is slow, say on a store that stopped answering), further wake-ups
	// find one queued and start none, so a stream has at most two.
	p.queued.Store(false)
	p.deliverLocked()
}

func (p *parked) deliverLocked() {
	if p.ended || p.sub == nil {
		return
	}
	// No deadline of its own (a timer per delivery showed in profiles):
	// a delivery reads what a wake-up announced, and the stores bound their
	// calls (the Redis client's read and write timeouts).
	d, err := p.sub.Ready(context.Background())
	if err != nil {
		p.fail(err)
		return
	}
	if len(d.Frames) > 0 {
		p.send(d, false)
	}
}

// heartbeat runs at least every Heartbeat: the subscription's check (no
// store call: the gateway keeps held sessions alive in batches, and a
// broker that lost wake-ups wakes every listener), at most once per
// Heartbeat; and a heartbeat event once the stream was silent for
// Heartbeat. It then runs again when the next of the two is due.
func (p *parked) heartbeat() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ended {
		return
	}
	hb := p.t.cfg.Heartbeat
	const early = 5 * time.Millisecond // a timer may fire a little early
	if time.Since(p.lastCheck) >= hb-early {
		ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
		d, err := p.sub.Check(ctx, hb)
		cancel()
		if err != nil {
			p.fail(err)
			return
		}
		p.lastCheck = time.Now()
		if len(d.Frames) > 0 {
			p.send(d, false)
		}
	}
	if !p.ended && time.Since(p.lastWrite) >= hb-early {
		p.send(&gateway.Delivery{}, true)
	}
	if !p.ended {
		next := min(time.Until(p.lastCheck.Add(hb)), time.Until(p.lastWrite.Add(hb)))
		p.beat.Reset(max(next, early))
	}
}

// expire ends the stream at its lifetime.
func (p *parked) expire() { p.finish() }

// finish ends the stream cleanly with a short retry, so that the client
// resumes from its last id at once (on another instance when draining).
func (p *parked) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ended {
		return
	}
	buf := writeBuffers.Get().(*bytes.Buffer)
	buf.WriteString("retry: 100\n\n")
	_ = p.write(buf)
	writeBuffers.Put(buf)
	p.end(true)
}

// watchClient reads until the client closes the connection (or the stream
// ends and closes it).
func (p *parked) watchClient() {
	var b [1]byte
	for {
		if _, err := p.conn.Read(b[:]); err != nil {
			break
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.ended {
		p.end(false) // the client left
	}
}

// send writes a delivery's frames, or a heartbeat event when it has none
// and beat is set.
func (p *parked) send(d *gateway.Delivery, beat bool) {
	buf := writeBuffers.Get().(*bytes.Buffer)
	defer writeBuffers.Put(buf)
	if len(d.Frames) == 0 && beat {
		buf.WriteString("event: heartbeat\ndata: ")
		buf.WriteString(strconv.FormatInt(time.Now().UnixMilli(), 10))
		buf.WriteString("\n\n")
	}
	var id [128]byte
	for i, f := range d.Frames {
		writeEvent(buf, "", d.Tokens[i].AppendText(id[:0]), f)
	}
	if err := p.write(buf); err != nil {
		p.end(false)
		return
	}
	d.Observe(p.t.gw.Observer(), transportName)
}

// fail ends the stream after a store error: session_gone when the session
// ended (the client starts a new one), else unavailable (it retries).
func (p *parked) fail(err error) {
	buf := writeBuffers.Get().(*bytes.Buffer)
	defer writeBuffers.Put(buf)
	if errors.Is(err, gateway.ErrNoSession) {
		msg, _ := json.Marshal(map[string]string{"reason": "session gone", "session": p.session})
		writeEvent(buf, "session_gone", nil, msg)
	} else {
		p.t.cfg.Logger.Error("sse: poll failed", "session", gateway.LogSession(p.session), "err", err)
		p.t.gw.Observer().Refused(transportName, "unavailable")
		buf.WriteString("event: unavailable\ndata: {\"reason\":\"" + reasonStore + "\"}\n\n")
	}
	_ = p.write(buf)
	p.end(true)
}

// write sends buf as one HTTP/1.1 chunk, in one write (writev), and
// empties it.
func (p *parked) write(buf *bytes.Buffer) error {
	if buf.Len() == 0 {
		return nil
	}
	var head [18]byte
	size := append(strconv.AppendInt(head[:0], int64(buf.Len()), 16), '\r', '\n')
	chunk := net.Buffers{size, buf.Bytes(), crlf}
	if now := time.Now(); p.deadline.Sub(now) < writeTimeout/2 {
		p.deadline = now.Add(writeTimeout)
		_ = p.conn.SetWriteDeadline(p.deadline)
	}
	_, err := chunk.WriteTo(p.conn)
	buf.Reset()
	p.lastWrite = time.Now()
	return err
}

var crlf = []byte("\r\n")

// end releases the stream; clean ends close the chunked body first.
func (p *parked) end(clean bool) {
	p.ended = true
	if clean {
		_, _ = p.conn.Write([]byte("0\r\n\r\n"))
	}
	_ = p.conn.Close()
	if p.beat != nil {
		p.beat.Stop()
		p.life.Stop()
	}
	if p.sub != nil {
		p.sub.Close()
	}
	p.t.parkedMu.Lock()
	delete(p.t.parked, p)
	p.t.parkedMu.Unlock()
	p.t.streams.Add(-1)
	p.t.gw.Observer().Open(transportName, -1)
}

// finishParked ends every parked stream with a short retry.
func (t *Transport) finishParked() {
	t.parkedMu.Lock()
	all := make([]*parked, 0, len(t.parked))
	for p := range t.parked {
		all = append(all, p)
	}
	t.parkedMu.Unlock()
	for _, p := range all {
		p.finish()
	}
}

// Close ends the streams this transport parked, as a drain does. Streams
// served by their own goroutine end with their requests.
func (t *Transport) Close() { t.finishParked() }
