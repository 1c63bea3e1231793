// Package chat is Sluice's default app (docs/chat-app.md): rooms "sala:*"
// with history and presence, and per-user notifications "notificaciones:*"
// filtered by level. It reimplements a Phoenix chat app, called "the seed"
// in these comments; its topics, events and replies (in Spanish) are that
// app's contract.
package chat

import (
	"context"
	"crypto/sha256"
	"errors"
	"slices"
	"strconv"
	"sync"
	"time"
)

// ErrNoRoom is returned for a room that does not exist.
var ErrNoRoom = errors.New("no such room")

// Room is a chat room: a private room has a password (sala:privada:<id>), a
// members-only room lists its members (sala:<id>).
type Room struct {
	ID       string   `json:"id"`
	Password string   `json:"password,omitempty"`
	Members  []string `json:"miembros"`
}

// HasMember reports whether the user with key userKey is a member.
func (r *Room) HasMember(userKey string) bool { return slices.Contains(r.Members, userKey) }

// Mensaje is one chat message as clients see it.
type Mensaje struct {
	ID        int64     `json:"id"`
	Contenido string    `json:"contenido"`
	Autor     string    `json:"autor"`
	Timestamp time.Time `json:"timestamp"`
}

// Store keeps rooms and their message history.
type Store interface {
	// PutRoom creates or replaces a room.
	PutRoom(ctx context.Context, r Room) error
	// Room returns a room or ErrNoRoom.
	Room(ctx context.Context, id string) (*Room, error)
	// AddMessage stores m in the history of room (a topic suffix such as
	// "lobby") with a new id and returns it.
	AddMessage(ctx context.Context, room string, m Mensaje) (Mensaje, error)
	// LastMessages returns at most n of the room's newest messages, oldest first.
	LastMessages(ctx context.Context, room string, n int) ([]Mensaje, error)
	// CountJoinAttempt counts one attempt by user to join the private room
	// with a password and returns how many it counted in the current window,
	// this one included, atomically across instances. The window starts at
	// the first attempt counted and lasts window; then the count starts
	// over. A join that succeeds clears the count (ClearJoinAttempts), so
	// what it counts is failures, plus the attempts being checked.
	CountJoinAttempt(ctx context.Context, room, user string, window time.Duration) (int64, error)
	// ClearJoinAttempts forgets user's attempts to join room.
	ClearJoinAttempts(ctx context.Context, room, user string) error
}

// joinAttemptKey names a user's attempts on a room by a hash: room ids from
// topics and user ids from tokens can be long, and a counter must cost the
// same whatever they are. The length prefix keeps ("a:b", "c") and ("a",
// "b:c") apart.
func joinAttemptKey(room, user string) [sha256.Size]byte {
	return sha256.Sum256([]byte(strconv.Itoa(len(room)) + ":" + room + user))
}

// MemoryStore is a Store for one instance.
type MemoryStore struct {
	mu       sync.Mutex
	rooms    map[string]Room
	history  map[string][]Mensaje
	nextID   int64
	keepLast int
	attempts map[[sha256.Size]byte]joinAttempts
	// sweepAt is when expired attempts are next forgotten.
	sweepAt time.Time
}

// joinAttempts is a count of join attempts and the end of its window.
type joinAttempts struct {
	n     int64
	until time.Time
}

// NewMemoryStore returns an empty store keeping the last keepLast messages of
// each room.
func NewMemoryStore(keepLast int) *MemoryStore {
	return &MemoryStore{rooms: make(map[string]Room), history: make(map[string][]Mensaje), keepLast: keepLast, attempts: make(map[[sha256.Size]byte]joinAttempts)}
}

// PutRoom implements Store.
func (s *MemoryStore) PutRoom(_ context.Context, r Room) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	r.Members = slices.Clone(r.Members)
	s.rooms[r.ID] = r
	return nil
}

// Room implements Store.
func (s *MemoryStore) Room(_ context.Context, id string) (*Room, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.rooms[id]
	if !ok {
		return nil, ErrNoRoom
	}
	r.Members = slices.Clone(r.Members)
	return &r, nil
}

// AddMessage implements Store.
func (s *MemoryStore) AddMessage(_ context.Context, room string, m Mensaje) (Mensaje, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextID++
	m.ID = s.nextID
	h := append(s.history[room], m)
	if over := len(h) - s.keepLast; over > 0 {
		h = append([]Mensaje(nil), h[over:]...)
	}
	s.history[room] = h
	return m, nil
}

// LastMessages implements Store.
func (s *MemoryStore) LastMessages(_ context.Context, room string, n int) ([]Mensaje, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.history[room]
	if len(h) > n {
		h = h[len(h)-n:]
	}
	return slices.Clone(h), nil
}

// CountJoinAttempt implements Store.
func (s *MemoryStore) CountJoinAttempt(_ context.Context, room, user string, window time.Duration) (int64, error) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if now.After(s.sweepAt) {
		// Forget expired counts now and then, so that attempts on many
		// rooms cost memory only for a window.
		for k, a := range s.attempts {
			if !now.Before(a.until) {
				delete(s.attempts, k)
			}
		}
		s.sweepAt = now.Add(window)
	}
	k := joinAttemptKey(room, user)
	a := s.attempts[k]
	if !now.Before(a.until) {
		a = joinAttempts{until: now.Add(window)}
	}
	a.n++
	s.attempts[k] = a
	return a.n, nil
}

// ClearJoinAttempts implements Store.
func (s *MemoryStore) ClearJoinAttempts(_ context.Context, room, user string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.attempts, joinAttemptKey(room, user))
	return nil
}
