// Package chat is Sluice's default app (docs/chat-app.md): rooms "sala:*"
// with history and presence, and per-user notifications "notificaciones:*"
// filtered by level. It reimplements a Phoenix chat app, called "the seed"
// in these comments; its topics, events and replies (in Spanish) are that
// app's contract.
package chat

import (
	"context"
	"errors"
	"slices"
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
}

// MemoryStore is a Store for one instance.
type MemoryStore struct {
	mu       sync.Mutex
	rooms    map[string]Room
	history  map[string][]Mensaje
	nextID   int64
	keepLast int
}

// NewMemoryStore returns an empty store keeping the last keepLast messages of
// each room.
func NewMemoryStore(keepLast int) *MemoryStore {
	return &MemoryStore{rooms: make(map[string]Room), history: make(map[string][]Mensaje), keepLast: keepLast}
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
