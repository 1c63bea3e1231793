package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
)

// Handler is a channel implementation, registered for a topic pattern like a
// Phoenix channel module. Its methods run on whichever instance receives the
// client's message; state kept between messages belongs in the Context's
// assigns, which are stored with the session.
//
// A Handler may also implement AfterJoiner, Interceptor and Terminator.
type Handler interface {
	// Join decides whether the client may join c.Topic. Return Ok(response)
	// to accept (response may be nil) or Error(response) to refuse; as in
	// Phoenix, the response of a refusal is usually {"reason": "..."}.
	Join(c *Context, payload json.RawMessage) Reply
	// HandleIn handles an event pushed by the client on a joined channel.
	// Return Ok/Error to reply, or NoReply.
	HandleIn(c *Context, event string, payload json.RawMessage) Reply
}

// AfterJoiner is implemented by handlers with work to do once the join reply
// is sent, like Phoenix's `send(self(), :after_join)`: pushes made here reach
// the client after the join reply. An error crashes the channel.
type AfterJoiner interface {
	AfterJoin(c *Context) error
}

// Interceptor is implemented by handlers that filter or rewrite some
// broadcast events per subscriber, like Phoenix's `intercept` and
// `handle_out`. HandleOut runs when the message is delivered to each
// subscriber of this channel; it pushes what that subscriber should get (or
// nothing) with c.Push. Assigns changed in HandleOut are not stored.
type Interceptor interface {
	Intercepts() []string
	HandleOut(c *Context, event string, payload json.RawMessage) error
}

// Terminator is implemented by handlers that want to know when a channel
// ends: reason is "left", "closed" (the handler stopped it), "crashed",
// "duplicate_join", "expired" or "disconnected".
type Terminator interface {
	Terminate(c *Context, reason string)
}

// Reply is a handler's answer to a join or a pushed event.
type Reply struct {
	status   string
	response any
	stop     bool
}

// Ok replies with status "ok" and response (nil means {}).
func Ok(response any) Reply { return Reply{status: "ok", response: response} }

// Error replies with status "error" and response (nil means {}).
func Error(response any) Reply { return Reply{status: "error", response: response} }

// NoReply sends no reply, like Phoenix's {:noreply, socket}.
var NoReply = Reply{}

// Stop returns r with the channel closed after the reply is sent, like
// Phoenix's {:stop, reason, reply, socket}: the client gets phx_close.
func (r Reply) Stop() Reply { r.stop = true; return r }

// Status is "ok", "error", or "" for NoReply.
func (r Reply) Status() string { return r.status }

// Context is what a handler callback works with: the channel's topic, the
// user, its assigns, and the ways to send messages. It is valid only during
// the callback.
type Context struct {
	ctx     context.Context
	gw      *Gateway
	session *Session
	channel *ChannelState
	handler Handler
	fx      *effects
	// deliver is set during HandleOut: pushes go straight to the subscriber
	// being delivered to instead of its mailbox.
	deliver func(*Message)
}

// Context returns the request's context.
func (c *Context) Context() context.Context { return c.ctx }

// Topic is the channel's topic, e.g. "sala:lobby".
func (c *Context) Topic() string { return c.channel.Topic }

// JoinRef is the client's join reference of this channel (nil for V1 clients).
func (c *Context) JoinRef() *string { return c.channel.JoinRef }

// UserID is the user's id as the token carried it (a JSON number or string).
func (c *Context) UserID() json.RawMessage { return c.session.UserID }

// UserKey is the user's id as a string, e.g. "42".
func (c *Context) UserKey() string { return c.session.UserKey() }

// UserName is the user's display name from the token ("" if it had none).
func (c *Context) UserName() string { return c.session.Name }

// SocketID is "user_socket:<user id>".
func (c *Context) SocketID() string { return c.session.SocketID() }

// SessionID identifies the client's session.
func (c *Context) SessionID() string { return c.session.ID }

// Logger returns the gateway's logger with the session and topic attached.
func (c *Context) Logger() *slog.Logger {
	return c.gw.log.With("session", LogSession(c.session.ID), "topic", c.channel.Topic)
}

// Assign stores v (encoded as JSON) under key in the channel's assigns.
func (c *Context) Assign(key string, v any) error {
	b, err := marshalJSON(v)
	if err != nil {
		return fmt.Errorf("assign %q: %w", key, err)
	}
	if c.channel.Assigns == nil {
		c.channel.Assigns = make(map[string]json.RawMessage)
	}
	c.channel.Assigns[key] = b
	c.session.assigned = true
	return nil
}

// Assigned decodes the value stored under key into dst and reports whether
// there was one.
func (c *Context) Assigned(key string, dst any) bool {
	raw, ok := c.channel.Assigns[key]
	if !ok {
		return false
	}
	return json.Unmarshal(raw, dst) == nil
}

// Push sends event to this client only, like Phoenix's push/3.
func (c *Context) Push(event string, payload any) error {
	p, err := marshalPayload(payload)
	if err != nil {
		return fmt.Errorf("push %s: %w", event, err)
	}
	m := &Message{JoinRef: c.channel.JoinRef, Topic: c.channel.Topic, Event: event, Payload: p}
	if c.deliver != nil {
		c.deliver(m)
		return nil
	}
	c.fx.mailbox(c.session.ID, m)
	return nil
}

// Broadcast sends event to every subscriber of the topic, this client
// included, on every instance, like Phoenix's broadcast!/3.
func (c *Context) Broadcast(event string, payload any) error {
	return c.broadcast(event, payload, "")
}

// BroadcastFrom sends event to every subscriber of the topic but this
// channel, like Phoenix's broadcast_from!/3.
func (c *Context) BroadcastFrom(event string, payload any) error {
	return c.broadcast(event, payload, owner(c.session.ID, c.channel.Slot))
}

func (c *Context) broadcast(event string, payload any, from string) error {
	p, err := marshalPayload(payload)
	if err != nil {
		return fmt.Errorf("broadcast %s: %w", event, err)
	}
	if c.fx == nil {
		return c.gw.publish(c.ctx, c.channel.Topic, event, p, from)
	}
	c.fx.topic(c.channel.Topic, event, p, from)
	return nil
}
