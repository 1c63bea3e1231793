//go:build linux

package idlepoll

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"syscall"
	"time"
)

// Poller is the process's epoll set of parked connections.
type Poller struct {
	epfd int

	mu      sync.Mutex
	nextID  uint64
	waiters map[uint64]*Waiter
}

var shared struct {
	once sync.Once
	p    *Poller
}

// Shared returns the process's poller, started at first use; nil if epoll
// is not available (then each connection waits on its own goroutine).
func Shared(log *slog.Logger) *Poller {
	shared.once.Do(func() {
		epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
		if err != nil {
			log.Warn("idlepoll: no epoll; idle connections each keep a goroutine", "err", err)
			return
		}
		p := &Poller{epfd: epfd, waiters: make(map[uint64]*Waiter)}
		shared.p = p
		go p.loop(log)
	})
	return shared.p
}

// Add registers w, whose fn runs (on the poller's goroutine: it must not
// block) each time w's armed connection becomes readable.
func (p *Poller) Add(w *Waiter, fn func()) {
	p.mu.Lock()
	p.nextID++
	*w = Waiter{p: p, id: p.nextID, fn: fn}
	p.waiters[w.id] = w
	p.mu.Unlock()
}

// Remove forgets w; an event already taken for it finds nothing. It does
// nothing if w is not registered.
func (w *Waiter) Remove() {
	if w.p == nil {
		return
	}
	w.p.mu.Lock()
	delete(w.p.waiters, w.id)
	w.p.mu.Unlock()
}

// Arm registers fd for one wake-up when it becomes readable (or is closed
// by the peer). It must run inside the connection's RawConn.Control, so
// that the descriptor cannot be closed and reused meanwhile, and not while
// another Arm of w runs.
func (w *Waiter) Arm(fd int) error {
	ev := syscall.EpollEvent{
		Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT,
		Fd:     int32(uint32(w.id)),
		Pad:    int32(uint32(w.id >> 32)),
	}
	op := syscall.EPOLL_CTL_MOD
	if !w.armed {
		op = syscall.EPOLL_CTL_ADD
	}
	err := syscall.EpollCtl(w.p.epfd, op, fd, &ev)
	if errors.Is(err, syscall.EEXIST) {
		// The connection was registered before, by a registration that
		// fired and was removed (a long-poll connection parked again):
		// the kernel keeps it until the connection closes.
		err = syscall.EpollCtl(w.p.epfd, syscall.EPOLL_CTL_MOD, fd, &ev)
	}
	if err != nil {
		return fmt.Errorf("idlepoll: arming the connection: %w", err)
	}
	w.armed = true
	return nil
}

func (p *Poller) loop(log *slog.Logger) {
	events := make([]syscall.EpollEvent, 128)
	for {
		n, err := syscall.EpollWait(p.epfd, events, -1)
		if err != nil {
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			// Not expected (a bad descriptor or argument): say so, and
			// wait again rather than leave parked connections unread.
			log.Error("idlepoll: the wait failed", "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		for _, ev := range events[:n] {
			id := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			p.mu.Lock()
			w := p.waiters[id]
			p.mu.Unlock()
			if w != nil {
				w.fn()
			}
		}
	}
}

// What Peek found on a connection.
const (
	// Nothing: nothing to read yet.
	Nothing = iota
	// Data: bytes wait to be read.
	Data
	// Closed: the peer closed the connection, or it failed.
	Closed
)

// Peek reports what raw's connection holds, without reading it: Data,
// Closed, or Nothing (a wake-up for nothing: arm it again).
func Peek(raw syscall.RawConn) int {
	var b [1]byte
	state := Closed
	err := raw.Control(func(fd uintptr) {
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case n > 0:
			state = Data
		case errors.Is(err, syscall.EAGAIN), errors.Is(err, syscall.EINTR):
			state = Nothing
		}
	})
	if err != nil {
		return Closed
	}
	return state
}
