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
	"syscall"
	"time"

	"github.com/sluicegw/sluice/gateway"
)

// A parked stream is an SSE stream whose connection was taken from net/http
// (Hijack) once its opening was written, so that while it waits it holds no
// handler goroutine, no net/http buffers and no write buffer: only its
// connection, its subscription, two timers and a reader goroutine blocked
// on a one-byte read (which notices the client leaving). A wake-up's
// delivery runs on its shard's deliverer (deliverers.go); the heartbeat and
// the end each run a short task; one runs at a time per stream. The
// response goes on as HTTP/1.1 chunked encoding, as net/http started it.
//
// Hijacking is not possible over HTTP/2; such streams keep the goroutine.
type parked struct {
	t    *Transport
	conn net.Conn
	// raw writes to conn without blocking; nil if conn is not a plain
	// socket (then its writes block, and its deliveries run on goroutines
	// of their own rather than hold up a deliverer).
	raw syscall.RawConn
	// rw is writeNow's state and rawWrite the function it hands raw.Write,
	// made once per stream: a closure per write cost two or three
	// allocations per delivery.
	rw       rawWrite
	rawWrite func(fd uintptr) bool
	// shard is the deliverer the stream's deliveries run on.
	shard uint32
	sub   *gateway.Subscription
	// session is the session id, for messages.
	session string

	mu    sync.Mutex // held by the running task; released with unlock
	ended bool
	// queued: a delivery is scheduled and has not started.
	queued atomic.Bool
	// redeliver: a delivery found another task running and left its work
	// to it (see deliver).
	redeliver atomic.Bool
	// behind: a write is being finished by writeBehind (the client's
	// socket was full); nothing else is written until it is done.
	// behindWoken: a delivery waits for it; behindFinish: the end does.
	behind       bool
	behindWoken  bool
	behindFinish bool

	beat *time.Timer
	life *time.Timer
	// lastWrite is when the stream last wrote, for the heartbeat event;
	// lastCheck when it last ran the subscription's Check.
	lastWrite time.Time
	lastCheck time.Time
	// deadline is the connection's write deadline, moved once half spent.
	deadline time.Time

	// While the stores fail (a Redis slow under load times out), the stream
	// waits and tries again (see gateway.StoreRetry): retryAt is when it
	// tries next (wake-ups before then coalesce into that try), and retry
	// the timer that makes the try.
	failing gateway.StoreRetry
	retryAt time.Time
	retry   *time.Timer
}

// storeTimeout bounds a task's calls to the stores.
const storeTimeout = 10 * time.Second

// writeBuffers holds the buffers tasks build their writes in: a parked
// stream holds none while it waits.
var writeBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// park hands the stream to a parked task set, and reports false if the
// connection cannot be hijacked (the caller then serves the stream itself).
// On true, the stream's counters and sub are the parked stream's to
// release. p is from newParked, sub the subscription whose wake-ups go to
// p.wake.
func (t *Transport) park(w http.ResponseWriter, p *parked, sub *gateway.Subscription, lifetime time.Duration) bool {
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
	p.conn, p.lastWrite, p.lastCheck = conn, now, now
	if sc, ok := conn.(syscall.Conn); ok {
		if p.raw, _ = sc.SyscallConn(); p.raw != nil {
			p.rawWrite = p.rw.write
			// A raw write fails once a write deadline has passed: none
			// while the stream writes without waiting.
			_ = conn.SetWriteDeadline(time.Time{})
		}
	}
	p.mu.Lock()
	defer p.unlock()
	p.sub = sub
	t.parked.Add(p)
	p.beat = time.AfterFunc(t.cfg.Heartbeat, p.heartbeat)
	p.life = time.AfterFunc(lifetime, p.expire)
	go p.watchClient()
	// Wake-ups schedule deliveries from now on; what arrived since the
	// subscription listened is in the first read of everything.
	p.queued.Store(false)
	p.deliverLocked()
	return true
}

// newParked returns a stream to park, for its subscription's wake-ups
// (wake) before it is parked: they are held back (queued) until park makes
// its first read, which reads what they announced.
func (t *Transport) newParked(tok gateway.SessionToken) *parked {
	p := &parked{t: t, session: tok.SessionID, shard: t.nextShard.Add(1)}
	p.queued.Store(true)
	return p
}

// wake is the subscription's wake-up: schedule a delivery. It runs with
// the broker's hub locked, and does not block.
func (p *parked) wake() {
	if !p.queued.CompareAndSwap(false, true) {
		return // one is scheduled: it delivers this wake-up's records too
	}
	if p.raw == nil {
		go p.deliver()
		return
	}
	p.t.deliverers.add(p)
}

// deliver runs a scheduled delivery. It never waits for another task of
// the stream (a heartbeat's check waiting on a slow store, the end): it
// leaves the delivery to that task, which makes it when it unlocks.
func (p *parked) deliver() {
	// Cleared first: a wake-up from now on schedules another delivery.
	p.queued.Store(false)
	p.redeliver.Store(true)
	if !p.mu.TryLock() {
		return // the holder's unlock sees redeliver
	}
	p.redeliver.Store(false)
	p.deliverLocked()
	p.unlock()
}

// unlock releases the stream, then schedules the delivery that another
// task left to this one, if any. (Set before that task tried the lock, and
// looked at after this one released it: one of the two delivers.)
func (p *parked) unlock() {
	p.mu.Unlock()
	if p.redeliver.Swap(false) {
		p.wake()
	}
}

func (p *parked) deliverLocked() {
	if p.ended || p.sub == nil {
		return
	}
	if p.behind {
		p.behindWoken = true // writeBehind delivers when it is done
		return
	}
	if p.waitingRetry(time.Now()) {
		return // the retry timer delivers what this wake-up announced
	}
	// No deadline of its own (a timer per delivery showed in profiles):
	// a delivery reads what a wake-up announced, and the stores bound their
	// calls (the Redis client's read and write timeouts).
	d, err := p.sub.Ready(context.Background())
	if err != nil {
		p.storeFailed(err)
		return
	}
	p.storeAnswered()
	if len(d.Frames) > 0 {
		p.send(d, false)
	}
}

// waitingRetry reports whether the stream waits to retry its stores.
func (p *parked) waitingRetry(now time.Time) bool {
	// A little slack: the retry timer's own wake-up must not find itself early.
	return !p.retryAt.IsZero() && now.Before(p.retryAt.Add(-time.Millisecond))
}

// storeFailed handles a store error of a delivery or a check: the stream
// ends when the session is gone (session_gone) or the store has failed for
// too long (unavailable); otherwise it waits and retries, its heartbeats
// still going out (see gateway.StoreRetry).
func (p *parked) storeFailed(err error) {
	now := time.Now()
	first := !p.failing.Failing()
	wait, retry := p.failing.Failed(p.t.gw, err, now)
	if !retry {
		p.fail(err)
		return
	}
	if first {
		p.t.cfg.Logger.Debug("sse: store call failed; the stream waits and retries", "session", gateway.LogSession(p.session), "err", err)
	}
	p.retryAt = now.Add(wait)
	if p.retry == nil {
		p.retry = time.AfterFunc(wait, p.wake)
	} else {
		p.retry.Reset(wait)
	}
}

// storeAnswered ends a spell of store failures.
func (p *parked) storeAnswered() {
	if p.failing.Failing() {
		d := p.failing.Answered(time.Now())
		p.t.cfg.Logger.Debug("sse: the store answers again", "session", gateway.LogSession(p.session), "failed_for", d)
		p.retryAt = time.Time{}
	}
}

// heartbeat runs at least every Heartbeat: the subscription's check (no
// store call: the gateway keeps held sessions alive in batches, and a
// broker that lost wake-ups wakes every listener), at most once per
// Heartbeat; and a heartbeat event once the stream was silent for
// Heartbeat. It then runs again when the next of the two is due.
func (p *parked) heartbeat() {
	p.mu.Lock()
	defer p.unlock()
	if p.ended {
		return
	}
	hb := p.t.cfg.Heartbeat
	if p.behind {
		// Bytes are on their way: no heartbeat is needed, and a check
		// could not write what it read. Look again soon.
		p.beat.Reset(min(hb, time.Second))
		return
	}
	const early = 5 * time.Millisecond // a timer may fire a little early
	if time.Since(p.lastCheck) >= hb-early && !p.waitingRetry(time.Now()) {
		ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
		d, err := p.sub.Check(ctx, hb)
		cancel()
		if err == nil {
			p.storeAnswered()
			p.lastCheck = time.Now()
			if len(d.Frames) > 0 {
				p.send(d, false)
			}
		} else if p.storeFailed(err); p.ended {
			return
		}
	}
	if !p.ended && time.Since(p.lastWrite) >= hb-early {
		// Also while the stores fail: the client and the proxies in
		// between see a live stream.
		p.send(&gateway.Delivery{}, true)
	}
	if !p.ended {
		// The next check is due a Heartbeat after the last one that
		// worked, but not before the stream's retry.
		checkAt := p.lastCheck.Add(hb)
		if p.retryAt.After(checkAt) {
			checkAt = p.retryAt
		}
		next := min(time.Until(checkAt), time.Until(p.lastWrite.Add(hb)))
		p.beat.Reset(max(next, early))
	}
}

// expire ends the stream at its lifetime.
func (p *parked) expire() { p.finish() }

// finish ends the stream cleanly with a short retry, so that the client
// resumes from its last id at once (on another instance when draining).
func (p *parked) finish() {
	p.mu.Lock()
	defer p.unlock()
	p.finishLocked()
}

func (p *parked) finishLocked() {
	if p.ended {
		return
	}
	if p.behind {
		p.behindFinish = true // writeBehind finishes when it is done
		return
	}
	buf := chunkBuffer()
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
	defer p.unlock()
	if !p.ended {
		p.end(false) // the client left
	}
}

// send writes a delivery's frames, or a heartbeat event when it has none
// and beat is set.
func (p *parked) send(d *gateway.Delivery, beat bool) {
	buf := chunkBuffer()
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
	buf := chunkBuffer()
	defer writeBuffers.Put(buf)
	if errors.Is(err, gateway.ErrNoSession) {
		msg, _ := json.Marshal(map[string]string{"reason": "session gone", "session": p.session})
		writeEvent(buf, "session_gone", nil, msg)
	} else {
		p.t.cfg.Logger.Error("sse: poll failed", "session", gateway.LogSession(p.session), "err", err)
		p.t.gw.Observer().Refused(transportName, "unavailable")
		buf.WriteString("event: unavailable\ndata: {\"reason\":\"" + reasonStore + "\"}\n\n")
	}
	if p.behind {
		p.end(false) // the client reconnects and is told then
		return
	}
	_ = p.write(buf)
	p.end(true)
}

// chunkHead is the room a chunk buffer keeps in front for the chunk's size
// line (up to 16 hex digits and CRLF).
const chunkHead = 18

var chunkRoom [chunkHead]byte

// chunkBuffer returns an empty buffer from writeBuffers with room for the
// chunk's size line in front: write sends a chunk in one write of one
// slice (a writev of three cost more in the kernel).
func chunkBuffer() *bytes.Buffer {
	buf := writeBuffers.Get().(*bytes.Buffer)
	buf.Reset()
	buf.Write(chunkRoom[:])
	return buf
}

// write sends buf (from chunkBuffer) as one HTTP/1.1 chunk, in one write,
// and empties it. On a plain socket it does not wait for the client: what
// the socket does not take goes to writeBehind.
func (p *parked) write(buf *bytes.Buffer) error {
	n := buf.Len() - chunkHead
	if n <= 0 {
		return nil
	}
	var head [chunkHead]byte
	size := append(strconv.AppendInt(head[:0], int64(n), 16), '\r', '\n')
	start := chunkHead - len(size)
	b := buf.Bytes()
	copy(b[start:], size)
	buf.WriteString("\r\n")
	b = buf.Bytes()[start:]
	defer buf.Reset()
	p.lastWrite = time.Now()
	if p.raw == nil {
		return p.writeBlocking(b)
	}
	written, err := p.writeNow(b)
	if err != nil {
		return err
	}
	if written < len(b) {
		p.behind = true
		go p.writeBehind(bytes.Clone(b[written:]))
	}
	return nil
}

// writeBlocking writes b, waiting up to Config.WriteTimeout for the client.
func (p *parked) writeBlocking(b []byte) error {
	if now := time.Now(); p.deadline.Sub(now) < p.t.cfg.WriteTimeout/2 {
		p.deadline = now.Add(p.t.cfg.WriteTimeout)
		_ = p.conn.SetWriteDeadline(p.deadline)
	}
	_, err := p.conn.Write(b)
	return err
}

// rawWrite is one non-blocking write's argument and results.
type rawWrite struct {
	b   []byte
	n   int
	err error
}

// write is the function raw.Write calls: one write(2), never waiting for
// the socket to be writable.
func (w *rawWrite) write(fd uintptr) bool {
	w.n, w.err = syscall.Write(int(fd), w.b)
	return true
}

// writeNow writes what the socket takes of b at once, without waiting. It
// runs in the stream's task (p.rw is the task's).
func (p *parked) writeNow(b []byte) (int, error) {
	p.rw = rawWrite{b: b}
	err := p.raw.Write(p.rawWrite)
	n, werr := p.rw.n, p.rw.err
	p.rw = rawWrite{} // holds no buffer while the stream waits
	switch {
	case err != nil:
		return 0, err
	case werr == syscall.EAGAIN || werr == syscall.EINTR:
		return 0, nil
	case werr != nil:
		return 0, werr
	}
	return n, nil
}

// writeBehind writes the rest of a chunk that the client's socket did not
// take, waiting up to Config.WriteTimeout for the client (a client that stopped
// reading is dropped), without holding the stream: its deliverer goes on
// with other streams. Then it makes the delivery or the end that waited.
func (p *parked) writeBehind(rest []byte) {
	_ = p.conn.SetWriteDeadline(time.Now().Add(p.t.cfg.WriteTimeout))
	_, err := p.conn.Write(rest)
	if err == nil {
		_ = p.conn.SetWriteDeadline(time.Time{}) // see park
	}
	p.mu.Lock()
	defer p.unlock()
	p.behind = false
	switch {
	case p.ended:
	case err != nil:
		p.end(false)
	case p.behindFinish:
		p.finishLocked()
	case p.behindWoken:
		p.behindWoken = false
		p.redeliver.Store(true) // unlock schedules it
	}
}

// end releases the stream; clean ends close the chunked body first.
func (p *parked) end(clean bool) {
	p.ended = true
	if clean && !p.behind {
		if p.raw != nil {
			_, _ = p.writeNow([]byte("0\r\n\r\n"))
		} else {
			_, _ = p.conn.Write([]byte("0\r\n\r\n"))
		}
	}
	_ = p.conn.Close()
	if p.beat != nil {
		p.beat.Stop()
		p.life.Stop()
	}
	if p.retry != nil {
		p.retry.Stop()
	}
	if p.sub != nil {
		p.sub.Close()
	}
	p.t.parked.Remove(p)
	p.t.streams.Add(-1)
	p.t.gw.Observer().Open(transportName, -1)
}

// finishParked ends every parked stream with a short retry.
func (t *Transport) finishParked() {
	for _, p := range t.parked.Snapshot() {
		p.finish()
	}
}

// Close ends the streams this transport parked, as a drain does. Streams
// served by their own goroutine end with their requests.
func (t *Transport) Close() { t.finishParked() }
