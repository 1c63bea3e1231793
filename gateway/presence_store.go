package gateway

import (
	"context"
	"encoding/json"
)

// PresenceEntry is one tracked presence: a channel (Owner) present under Key
// in a topic, with its meta (which includes its "phx_ref").
type PresenceEntry struct {
	Key   string          `json:"k"`
	Owner string          `json:"o"`
	Meta  json.RawMessage `json:"m"`
	// At orders entries: the time the entry was first tracked, in unix nanoseconds.
	At int64 `json:"at"`
}

// PresenceStore keeps the presence entries of every topic. Implementations
// must make RemovePresence exact: an entry is returned by one call only, so its
// leave is announced once whichever instances race to remove it.
type PresenceStore interface {
	// PutPresence tracks e, replacing the entry with the same topic, owner and key.
	// It returns the replaced entry, or nil if there was none.
	PutPresence(ctx context.Context, topic string, e PresenceEntry) (prev *PresenceEntry, err error)
	// RemovePresence untracks every entry of owner in topic and returns them.
	RemovePresence(ctx context.Context, topic, owner string) ([]PresenceEntry, error)
	// ListPresence returns the entries of topic, oldest first.
	ListPresence(ctx context.Context, topic string) ([]PresenceEntry, error)
}
