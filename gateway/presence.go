package gateway

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// ErrAlreadyTracked and ErrNotTracked are returned by Track and UpdatePresence.
var (
	ErrAlreadyTracked = errors.New("presence already tracked")
	ErrNotTracked     = errors.New("presence not tracked")
)

// PresenceGroup is what Presence.list gives for one key: its metas, one per
// channel (tab, device) tracked under that key.
type PresenceGroup struct {
	Metas []json.RawMessage `json:"metas"`
}

// presenceDiff is the payload of a presence_diff event.
type presenceDiff struct {
	Joins  map[string]*PresenceGroup `json:"joins"`
	Leaves map[string]*PresenceGroup `json:"leaves"`
}

// newPhxRef makes a presence reference: a timestamp and random bits, URL-safe
// base64 of 12 bytes, 16 characters like Phoenix's.
func newPhxRef() string {
	var b [12]byte
	binary.BigEndian.PutUint64(b[:8], uint64(time.Now().UnixNano()))
	_, _ = rand.Read(b[8:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// withRefs returns meta (a JSON object) with phx_ref and, if prev is not
// empty, phx_ref_prev set.
func withRefs(meta any, ref, prev string) (json.RawMessage, error) {
	raw, err := marshalPayload(meta)
	if err != nil {
		return nil, err
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil || obj == nil {
		return nil, fmt.Errorf("presence meta must be a JSON object")
	}
	obj["phx_ref"], _ = json.Marshal(ref)
	if prev != "" {
		obj["phx_ref_prev"], _ = json.Marshal(prev)
	} else {
		delete(obj, "phx_ref_prev")
	}
	return json.Marshal(obj)
}

func metaRef(meta json.RawMessage) string {
	var m struct {
		Ref string `json:"phx_ref"`
	}
	_ = json.Unmarshal(meta, &m)
	return m.Ref
}

// groupEntries turns entries into Presence.list's shape.
func groupEntries(entries []PresenceEntry) map[string]*PresenceGroup {
	out := make(map[string]*PresenceGroup)
	for _, e := range entries {
		g := out[e.Key]
		if g == nil {
			g = &PresenceGroup{}
			out[e.Key] = g
		}
		g.Metas = append(g.Metas, e.Meta)
	}
	return out
}

// Track starts tracking this channel's presence under key with meta (a JSON
// object; phx_ref is added) and broadcasts the presence_diff join, like
// Phoenix's Presence.track/3.
func (c *Context) Track(key string, meta any) error {
	m, err := withRefs(meta, newPhxRef(), "")
	if err != nil {
		return fmt.Errorf("track %q: %w", key, err)
	}
	own := owner(c.session.ID, c.channel.Slot)
	if old, err := c.findPresence(own, key); err != nil {
		return fmt.Errorf("track %q: %w", key, err)
	} else if old != nil {
		return fmt.Errorf("track %q: %w", key, ErrAlreadyTracked)
	}
	e := PresenceEntry{Key: key, Owner: own, Meta: m, At: time.Now().UnixNano()}
	if _, err := c.gw.cfg.Presence.PutPresence(c.ctx, c.channel.Topic, e); err != nil {
		return fmt.Errorf("track %q: %w", key, err)
	}
	diff := presenceDiff{Joins: groupEntries([]PresenceEntry{e}), Leaves: map[string]*PresenceGroup{}}
	return c.broadcastDiff(diff)
}

// UpdatePresence replaces the meta of this channel's presence under key; the
// new meta gets a new phx_ref and phx_ref_prev, and one presence_diff with
// the join of the new meta and the leave of the old one is broadcast, like
// Phoenix's Presence.update/3.
func (c *Context) UpdatePresence(key string, meta any) error {
	own := owner(c.session.ID, c.channel.Slot)
	old, err := c.findPresence(own, key)
	if err != nil {
		return fmt.Errorf("update presence %q: %w", key, err)
	}
	if old == nil {
		return fmt.Errorf("update presence %q: %w", key, ErrNotTracked)
	}
	m, err := withRefs(meta, newPhxRef(), metaRef(old.Meta))
	if err != nil {
		return fmt.Errorf("update presence %q: %w", key, err)
	}
	e := PresenceEntry{Key: key, Owner: own, Meta: m, At: old.At}
	if _, err := c.gw.cfg.Presence.PutPresence(c.ctx, c.channel.Topic, e); err != nil {
		return fmt.Errorf("update presence %q: %w", key, err)
	}
	return c.broadcastDiff(presenceDiff{Joins: groupEntries([]PresenceEntry{e}), Leaves: groupEntries([]PresenceEntry{*old})})
}

// findPresence returns the entry of owner under key, or nil. Changes to one
// channel's presence are serialized by the session lock, so reading first is
// safe.
func (c *Context) findPresence(own, key string) (*PresenceEntry, error) {
	entries, err := c.gw.cfg.Presence.ListPresence(c.ctx, c.channel.Topic)
	if err != nil {
		return nil, err
	}
	for i := range entries {
		if entries[i].Owner == own && entries[i].Key == key {
			return &entries[i], nil
		}
	}
	return nil, nil
}

// PresenceList returns the topic's presences, like Phoenix's Presence.list/1:
// key → {"metas": [...]}.
func (c *Context) PresenceList() (map[string]*PresenceGroup, error) {
	entries, err := c.gw.cfg.Presence.ListPresence(c.ctx, c.channel.Topic)
	if err != nil {
		return nil, fmt.Errorf("list presence: %w", err)
	}
	return groupEntries(entries), nil
}

func (c *Context) broadcastDiff(d presenceDiff) error {
	p, err := json.Marshal(d)
	if err != nil {
		return err
	}
	return c.broadcast(EventPresenceDiff, json.RawMessage(p), "")
}

// untrackChannel removes every presence of a channel and returns the leave
// diff to broadcast, or nil if it had none.
func (g *Gateway) untrackChannel(c *Context) error {
	left, err := g.cfg.Presence.RemovePresence(c.ctx, c.channel.Topic, owner(c.session.ID, c.channel.Slot))
	if err != nil {
		return fmt.Errorf("untrack %s: %w", c.channel.Topic, err)
	}
	if len(left) == 0 {
		return nil
	}
	return c.broadcastDiff(presenceDiff{Joins: map[string]*PresenceGroup{}, Leaves: groupEntries(left)})
}
