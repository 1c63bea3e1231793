// Package testroom is the channel the transports' tests run against, shaped
// like the minimal Phoenix app whose answers the transports were checked
// against (Phoenix 1.7.24, one RoomChannel with Presence): "room:*",
// where a join tracks presence and pushes presence_state; "ping" echoes its
// payload, "shout" broadcasts it, "quiet" answers nothing, "boom" crashes.
package testroom

import (
	"encoding/json"

	"github.com/sluicegw/sluice/gateway"
)

// Handler is the "room:*" channel. "room:forbidden" refuses joins with
// {"reason": "unauthorized"}.
type Handler struct {
	// Gate, when set, holds user 42's join of "room:slow", so that a test
	// can act while a join is being handled.
	Gate *Gate
}

// Gate holds a join: Started is closed when it begins, and the join goes on
// when Release is closed.
type Gate struct {
	Started chan struct{}
	Release chan struct{}
}

// NewGate returns an open Gate.
func NewGate() *Gate {
	return &Gate{Started: make(chan struct{}), Release: make(chan struct{})}
}

// Join implements gateway.Handler.
func (h Handler) Join(c *gateway.Context, payload json.RawMessage) gateway.Reply {
	if c.Topic() == "room:forbidden" {
		return gateway.Error(map[string]string{"reason": "unauthorized"})
	}
	if h.Gate != nil && c.Topic() == "room:slow" && c.UserKey() == "42" {
		close(h.Gate.Started)
		<-h.Gate.Release
	}
	var p struct {
		Name string `json:"name"`
	}
	_ = json.Unmarshal(payload, &p)
	if p.Name == "" {
		p.Name = "user-" + c.UserKey()
	}
	if err := c.Assign("name", p.Name); err != nil {
		return gateway.Error(map[string]string{"reason": err.Error()})
	}
	return gateway.Ok(map[string]string{"joined": c.Topic()})
}

// AfterJoin implements gateway.AfterJoiner.
func (Handler) AfterJoin(c *gateway.Context) error {
	var name string
	c.Assigned("name", &name)
	if err := c.Track(c.UserKey(), map[string]string{"name": name}); err != nil {
		return err
	}
	list, err := c.PresenceList()
	if err != nil {
		return err
	}
	return c.Push("presence_state", list)
}

// HandleIn implements gateway.Handler.
func (Handler) HandleIn(c *gateway.Context, event string, payload json.RawMessage) gateway.Reply {
	switch event {
	case "ping":
		return gateway.Ok(payload)
	case "boom":
		panic("boom requested by the test")
	case "shout":
		if err := c.Broadcast("shouted", payload); err != nil {
			return gateway.Error(map[string]string{"reason": err.Error()})
		}
		return gateway.Ok(nil)
	case "quiet":
		return gateway.NoReply
	}
	return gateway.Error(map[string]string{"reason": "unknown event " + event})
}
