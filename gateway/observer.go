package gateway

import "time"

// Observer is told what the gateway and its transports do, for metrics. Its
// methods must be cheap and safe for concurrent use. Config.Observer
// defaults to one that does nothing.
type Observer interface {
	// SessionStarted counts a new session; SessionEnded one that ended, by
	// reason ("expired", "disconnected", "closed": its WebSocket closed).
	SessionStarted()
	SessionEnded(reason string)
	// Joined counts a join by the route's pattern and its outcome: "ok",
	// "error" (refused by the handler), "crashed", "unmatched", "limit".
	Joined(pattern, outcome string)
	// Received counts frames a client sent, by transport.
	Received(transport string, frames int)
	// Delivered counts one frame written to a client, by transport and kind
	// ("reply", "push", "broadcast", "presence", "control"), with how long
	// after its record was made it went out.
	Delivered(transport, kind string, latency time.Duration)
	// Open changes the number of open streams or waiting polls.
	Open(transport string, delta int)
	// Refused counts a request refused, by transport and reason.
	Refused(transport, reason string)
	// Resumed counts a stream resumed from its last event id.
	Resumed(transport string)
	// Gap counts a client told it fell behind the retained history.
	Gap()
}

// NopObserver is an Observer that does nothing: the default, and a base to
// embed for observers that watch only some events.
type NopObserver struct{}

func (NopObserver) SessionStarted()                         {}
func (NopObserver) SessionEnded(string)                     {}
func (NopObserver) Joined(string, string)                   {}
func (NopObserver) Received(string, int)                    {}
func (NopObserver) Delivered(string, string, time.Duration) {}
func (NopObserver) Open(string, int)                        {}
func (NopObserver) Refused(string, string)                  {}
func (NopObserver) Resumed(string)                          {}
func (NopObserver) Gap()                                    {}

// Observer returns the gateway's observer, for transports.
func (g *Gateway) Observer() Observer { return g.cfg.Observer }

// frameKind classifies a frame for Observer.Delivered.
func frameKind(m *Message) string {
	switch {
	case m.Event == EventReply:
		return "reply"
	case m.Event == EventClose || m.Event == EventError:
		return "control"
	case m.Event == EventPresenceDiff || m.Event == EventPresenceState:
		return "presence"
	case m.JoinRef == nil && m.Ref == nil:
		return "broadcast"
	}
	return "push"
}

// Observe reports a delivery's frames as written by transport, now.
func (d *Delivery) Observe(o Observer, transport string) {
	now := time.Now().UnixNano()
	for i, k := range d.Kinds {
		o.Delivered(transport, k, time.Duration(now-d.Times[i]))
	}
}
