package topics

import "sync"

// Hub wakes the listeners of this instance. Brokers use it to turn a publish
// (local, or received from another instance) into wake-ups; it holds no
// messages, only interest.
type Hub struct {
	mu        sync.Mutex
	listeners map[string]listenerSet
}

// listenerSet is the listeners of one topic. Most topics have one listener
// (a session's mailbox, listened by its one connection): it is held inline,
// without a map of its own, which would cost about 200 bytes per idle
// connection; a second listener moves them to a map.
type listenerSet struct {
	one  *Listener
	many map[*Listener]struct{}
}

func (s listenerSet) len() int {
	if s.many != nil {
		return len(s.many)
	}
	if s.one != nil {
		return 1
	}
	return 0
}

// each calls fn for every listener of the set.
func (s listenerSet) each(fn func(*Listener)) {
	if s.one != nil {
		fn(s.one)
	}
	for l := range s.many {
		fn(l)
	}
}

// with returns the set with l added.
func (s listenerSet) with(l *Listener) listenerSet {
	switch {
	case s.many != nil:
		s.many[l] = struct{}{}
	case s.one == nil:
		s.one = l
	default:
		s.many = map[*Listener]struct{}{s.one: {}, l: {}}
		s.one = nil
	}
	return s
}

// without returns the set with l removed.
func (s listenerSet) without(l *Listener) listenerSet {
	if s.one == l {
		s.one = nil
	}
	delete(s.many, l)
	return s
}

// Listener is a registration of interest in some topics, made by Broker.Listen.
type Listener struct {
	// C receives a value when one of the topics was published to. Wake-ups are
	// coalesced: one value may stand for several publishes. After Notify, C
	// is nil: wake-ups call the function instead.
	C      <-chan struct{}
	c      chan struct{}
	hub    *Hub
	topics []string
	once   sync.Once
	// notify, when set, is called on a wake-up instead of a send on c.
	notify func()
}

// NewHub returns an empty Hub.
func NewHub() *Hub {
	return &Hub{listeners: make(map[string]listenerSet)}
}

// Listen registers a listener for topics.
func (h *Hub) Listen(topics ...string) *Listener {
	c := make(chan struct{}, 1)
	l := &Listener{C: c, c: c, hub: h, topics: topics}
	h.mu.Lock()
	for _, t := range topics {
		h.listeners[t] = h.listeners[t].with(l)
	}
	h.mu.Unlock()
	return l
}

// Notify makes wake-ups call fn instead of sending on C, for a waiter that
// holds no goroutine; a wake-up already pending on C calls fn at once. C is
// nil from then on (its channel is freed: an idle connection does not keep
// it). fn is called with the hub locked: it must return at once and must not
// call Listen, Close or Notify. Call Notify before anything receives from C.
func (l *Listener) Notify(fn func()) {
	h := l.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	l.notify = fn
	if l.c == nil {
		return
	}
	select {
	case <-l.c:
		fn()
	default:
	}
	l.c, l.C = nil, nil
}

// Close removes the listener. It is safe to call more than once.
func (l *Listener) Close() {
	l.once.Do(func() {
		h := l.hub
		h.mu.Lock()
		for _, t := range l.topics {
			set, ok := h.listeners[t]
			if !ok {
				continue
			}
			if set = set.without(l); set.len() == 0 {
				delete(h.listeners, t)
			} else {
				h.listeners[t] = set
			}
		}
		h.mu.Unlock()
	})
}

// Wake wakes every listener of topic.
func (h *Hub) Wake(topic string) {
	h.mu.Lock()
	h.listeners[topic].each(wake)
	h.mu.Unlock()
}

// wake wakes one listener; the hub is locked.
func wake(l *Listener) {
	if l.notify != nil {
		l.notify()
		return
	}
	select {
	case l.c <- struct{}{}:
	default:
	}
}

// Listeners returns the number of listeners of topic on this instance.
func (h *Hub) Listeners(topic string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.listeners[topic].len()
}

// Interested reports whether some listener of this instance listens on topic.
func (h *Hub) Interested(topic string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.listeners[topic].len() > 0
}
