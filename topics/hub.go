package topics

import "sync"

// Hub wakes the listeners of this instance. Brokers use it to turn a publish
// (local, or received from another instance) into wake-ups; it holds no
// messages, only interest.
type Hub struct {
	mu        sync.Mutex
	listeners map[string]map[*Listener]struct{}
}

// Listener is a registration of interest in some topics, made by Broker.Listen.
type Listener struct {
	// C receives a value when one of the topics was published to. Wake-ups are
	// coalesced: one value may stand for several publishes.
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
	return &Hub{listeners: make(map[string]map[*Listener]struct{})}
}

// Listen registers a listener for topics.
func (h *Hub) Listen(topics ...string) *Listener {
	c := make(chan struct{}, 1)
	l := &Listener{C: c, c: c, hub: h, topics: topics}
	h.mu.Lock()
	for _, t := range topics {
		set := h.listeners[t]
		if set == nil {
			set = make(map[*Listener]struct{})
			h.listeners[t] = set
		}
		set[l] = struct{}{}
	}
	h.mu.Unlock()
	return l
}

// Notify makes wake-ups call fn instead of sending on C, for a waiter that
// holds no goroutine; a wake-up already pending on C calls fn at once. fn is
// called with the hub locked: it must return at once and must not call
// Listen, Close or Notify.
func (l *Listener) Notify(fn func()) {
	h := l.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	l.notify = fn
	select {
	case <-l.c:
		fn()
	default:
	}
}

// Close removes the listener. It is safe to call more than once.
func (l *Listener) Close() {
	l.once.Do(func() {
		h := l.hub
		h.mu.Lock()
		for _, t := range l.topics {
			if set := h.listeners[t]; set != nil {
				delete(set, l)
				if len(set) == 0 {
					delete(h.listeners, t)
				}
			}
		}
		h.mu.Unlock()
	})
}

// Wake wakes every listener of topic.
func (h *Hub) Wake(topic string) {
	h.mu.Lock()
	for l := range h.listeners[topic] {
		if l.notify != nil {
			l.notify()
			continue
		}
		select {
		case l.c <- struct{}{}:
		default:
		}
	}
	h.mu.Unlock()
}

// Listeners returns the number of listeners of topic on this instance.
func (h *Hub) Listeners(topic string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.listeners[topic])
}

// Interested reports whether some listener of this instance listens on topic.
func (h *Hub) Interested(topic string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.listeners[topic]) > 0
}
