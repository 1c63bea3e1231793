//go:build linux

package websocket

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"syscall"
	"time"
)

// idlePoller parks idle connections in one epoll set, so that an idle
// connection holds no goroutine at all (a goroutine is a 2 KiB stack and
// about 450 bytes of runtime state): one goroutine per process waits for
// any of them to become readable and starts a read turn for it. Each
// registration is one-shot: the connection is armed again when its turn
// ends. The runtime's poller keeps its own registration of the same file
// for the reads themselves.
type idlePoller struct {
	epfd int

	mu     sync.Mutex
	nextID uint64
	parked map[uint64]*socket
}

var theIdlePoller struct {
	once sync.Once
	p    *idlePoller
}

// sharedIdlePoller returns the process's idle poller, started at first use;
// nil if epoll is not available (then each connection waits on its own
// goroutine).
func sharedIdlePoller(log *slog.Logger) *idlePoller {
	theIdlePoller.once.Do(func() {
		epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
		if err != nil {
			log.Warn("websocket: no epoll; idle connections each keep a goroutine", "err", err)
			return
		}
		p := &idlePoller{epfd: epfd, parked: make(map[uint64]*socket)}
		theIdlePoller.p = p
		go p.loop(log)
	})
	return theIdlePoller.p
}

// add gives s an id for its registrations.
func (p *idlePoller) add(s *socket) {
	p.mu.Lock()
	p.nextID++
	s.pollID = p.nextID
	p.parked[s.pollID] = s
	p.mu.Unlock()
}

// remove forgets s; an event already taken for it finds nothing.
func (p *idlePoller) remove(s *socket) {
	p.mu.Lock()
	delete(p.parked, s.pollID)
	p.mu.Unlock()
}

// arm registers s's connection for one wake-up when it becomes readable
// (or is closed by the peer). It must run inside the connection's
// RawConn.Control, so that the descriptor cannot be closed and reused
// meanwhile.
func (p *idlePoller) arm(fd int, s *socket) error {
	ev := syscall.EpollEvent{
		Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT,
		Fd:     int32(uint32(s.pollID)),
		Pad:    int32(uint32(s.pollID >> 32)),
	}
	op := syscall.EPOLL_CTL_MOD
	if !s.armed {
		op = syscall.EPOLL_CTL_ADD
	}
	if err := syscall.EpollCtl(p.epfd, op, fd, &ev); err != nil {
		return fmt.Errorf("websocket: arming the idle connection: %w", err)
	}
	s.armed = true
	return nil
}

func (p *idlePoller) loop(log *slog.Logger) {
	events := make([]syscall.EpollEvent, 128)
	for {
		n, err := syscall.EpollWait(p.epfd, events, -1)
		if err != nil {
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			// Not expected (a bad descriptor or argument): say so, and
			// wait again rather than leave parked connections unread.
			log.Error("websocket: the idle poller's wait failed", "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		for _, ev := range events[:n] {
			id := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			p.mu.Lock()
			s := p.parked[id]
			p.mu.Unlock()
			if s != nil {
				s.unpark()
			}
		}
	}
}
