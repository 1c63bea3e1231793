package gateway

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// MemoryStore is the embedded, single-instance SessionStore and
// PresenceStore. Sessions are kept as deep copies, and handed out as deep
// copies, so that callers can never share state by accident, as with a
// remote store (a copy costs a fraction of decoding JSON, which each poll
// used to pay).
type MemoryStore struct {
	mu        sync.Mutex
	sessions  map[string]memSession
	bySocket  map[string]map[string]struct{}
	presence  map[string]map[string]PresenceEntry // topic → owner+"\x00"+key → entry
	locks     map[string]chan struct{}
	lockMutex sync.Mutex
}

type memSession struct {
	s        *Session // the store's own copy
	socketID string
	deadline time.Time
}

// NewMemoryStore returns an empty store.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{
		sessions: make(map[string]memSession),
		bySocket: make(map[string]map[string]struct{}),
		presence: make(map[string]map[string]PresenceEntry),
		locks:    make(map[string]chan struct{}),
	}
}

// Count returns the number of sessions held: what is lost when the process
// stops.
func (m *MemoryStore) Count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.sessions)
}

// Create implements SessionStore. The per-socket limit is checked and the
// session inserted under one hold of the store's mutex.
func (m *MemoryStore) Create(_ context.Context, s *Session, deadline time.Time, maxPerSocket int) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.sessions[s.ID]; ok {
		return fmt.Errorf("create session %s: already exists", SessionHandle(s.ID))
	}
	sock := s.SocketID()
	if maxPerSocket > 0 {
		now, live := time.Now(), 0
		for id := range m.bySocket[sock] {
			if m.sessions[id].deadline.After(now) {
				live++
			}
		}
		if live >= maxPerSocket {
			return tooManySessions(sock, live, maxPerSocket)
		}
	}
	m.sessions[s.ID] = memSession{s: s.clone(), socketID: sock, deadline: deadline}
	if m.bySocket[sock] == nil {
		m.bySocket[sock] = make(map[string]struct{})
	}
	m.bySocket[sock][s.ID] = struct{}{}
	return nil
}

// Load implements SessionStore.
func (m *MemoryStore) Load(_ context.Context, id string) (*Session, error) {
	m.mu.Lock()
	ms, ok := m.sessions[id]
	m.mu.Unlock()
	if !ok {
		return nil, ErrNoSession
	}
	return ms.s.clone(), nil
}

// Save implements SessionStore.
func (m *MemoryStore) Save(_ context.Context, s *Session) error {
	c := s.clone()
	m.mu.Lock()
	defer m.mu.Unlock()
	ms, ok := m.sessions[s.ID]
	if !ok {
		return ErrNoSession
	}
	ms.s = c
	m.sessions[s.ID] = ms
	return nil
}

// Touch implements SessionStore.
func (m *MemoryStore) Touch(_ context.Context, id string, deadline time.Time) (*Session, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ms, ok := m.sessions[id]
	if !ok {
		return nil, ErrNoSession
	}
	ms.deadline = deadline
	m.sessions[id] = ms
	return ms.s.clone(), nil
}

// TouchMany implements SessionStore, under one hold of the store's mutex.
// Its sessions' data lives until they are removed: renew changes nothing.
func (m *MemoryStore) TouchMany(_ context.Context, ids []string, deadline time.Time, _ bool) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var gone []string
	for _, id := range ids {
		ms, ok := m.sessions[id]
		if !ok {
			gone = append(gone, id)
			continue
		}
		ms.deadline = deadline
		m.sessions[id] = ms
	}
	return gone, nil
}

// Lock implements SessionStore.
func (m *MemoryStore) Lock(ctx context.Context, id string) (func(), error) {
	for {
		m.lockMutex.Lock()
		held, busy := m.locks[id]
		if !busy {
			done := make(chan struct{})
			m.locks[id] = done
			m.lockMutex.Unlock()
			return func() {
				m.lockMutex.Lock()
				delete(m.locks, id)
				m.lockMutex.Unlock()
				close(done)
			}, nil
		}
		m.lockMutex.Unlock()
		select {
		case <-held:
		case <-ctx.Done():
			return nil, fmt.Errorf("lock session %s: %w", id, ctx.Err())
		}
	}
}

// LockLoad implements SessionStore.
func (m *MemoryStore) LockLoad(ctx context.Context, id string) (func(), *Session, error) {
	unlock, err := m.Lock(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	s, err := m.Load(ctx, id)
	if err != nil {
		unlock()
		return nil, nil, err
	}
	return unlock, s, nil
}

// Claim implements SessionStore.
func (m *MemoryStore) Claim(_ context.Context, now time.Time, lease time.Duration, limit int) ([]*Session, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*Session
	for id, ms := range m.sessions {
		if len(out) >= limit {
			break
		}
		if ms.deadline.After(now) {
			continue
		}
		s := ms.s.clone()
		ms.deadline = now.Add(lease)
		m.sessions[id] = ms
		out = append(out, s)
	}
	return out, nil
}

// Remove implements SessionStore.
func (m *MemoryStore) Remove(_ context.Context, id string) (*Session, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.removeLocked(id)
}

func (m *MemoryStore) removeLocked(id string) (*Session, error) {
	ms, ok := m.sessions[id]
	if !ok {
		return nil, ErrNoSession
	}
	delete(m.sessions, id)
	if set := m.bySocket[ms.socketID]; set != nil {
		delete(set, id)
		if len(set) == 0 {
			delete(m.bySocket, ms.socketID)
		}
	}
	return ms.s, nil // no longer the store's
}

// BySocket implements SessionStore.
func (m *MemoryStore) BySocket(_ context.Context, socketID string) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var ids []string
	for id := range m.bySocket[socketID] {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids, nil
}

// PutPresence implements PresenceStore.
func (m *MemoryStore) PutPresence(_ context.Context, topic string, e PresenceEntry) (*PresenceEntry, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	set := m.presence[topic]
	if set == nil {
		set = make(map[string]PresenceEntry)
		m.presence[topic] = set
	}
	k := e.Owner + "\x00" + e.Key
	prev, had := set[k]
	if had {
		e.At = prev.At // an update keeps its place in the list
	}
	set[k] = e
	if had {
		return &prev, nil
	}
	return nil, nil
}

// RemovePresence implements PresenceStore.
func (m *MemoryStore) RemovePresence(_ context.Context, topic, owner string) ([]PresenceEntry, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	set := m.presence[topic]
	var out []PresenceEntry
	for k, e := range set {
		if e.Owner == owner {
			out = append(out, e)
			delete(set, k)
		}
	}
	if len(set) == 0 {
		delete(m.presence, topic)
	}
	sortEntries(out)
	return out, nil
}

// ListPresence implements PresenceStore.
func (m *MemoryStore) ListPresence(_ context.Context, topic string) ([]PresenceEntry, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]PresenceEntry, 0, len(m.presence[topic]))
	for _, e := range m.presence[topic] {
		out = append(out, e)
	}
	sortEntries(out)
	return out, nil
}

func sortEntries(es []PresenceEntry) {
	slices.SortFunc(es, func(a, b PresenceEntry) int {
		if a.At != b.At {
			if a.At < b.At {
				return -1
			}
			return 1
		}
		if a.Owner != b.Owner {
			if a.Owner < b.Owner {
				return -1
			}
			return 1
		}
		if a.Key < b.Key {
			return -1
		}
		if a.Key > b.Key {
			return 1
		}
		return 0
	})
}
