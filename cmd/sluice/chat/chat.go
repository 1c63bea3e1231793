package chat

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/go-playground/validator/v10"

	"github.com/sluicegw/sluice/gateway"
	"github.com/sluicegw/sluice/topics"
)

// HistorySize is how many messages a join reply carries, as the seed's
// Chat.ultimos_mensajes(sala_id, 50).
const HistorySize = 50

// Failed password joins of a private room are throttled per user and room,
// across instances (the count lives in the Store): after MaxJoinFailures
// failures within JoinFailureWindow, every join of that user to that room
// is refused with ReasonTooManyAttempts, even with the right password,
// until the window (counted from the first failure) passes. Without it one
// POST could carry 100 guesses.
const (
	MaxJoinFailures       = 5
	JoinFailureWindow     = time.Minute
	ReasonTooManyAttempts = "demasiados intentos; espera un minuto"
)

// App is the chat app: its channel handlers and its store.
type App struct {
	store    Store
	validate *validator.Validate
	// joinWindow is JoinFailureWindow; tests shorten it.
	joinWindow time.Duration
}

// New returns the app over store.
func New(store Store) *App {
	return &App{store: store, validate: validator.New(validator.WithRequiredStructEnabled()), joinWindow: JoinFailureWindow}
}

// Store returns the app's store.
func (a *App) Store() Store { return a.store }

// Register adds the app's channels to r, as the seed's UserSocket does:
// channel "sala:*" and channel "notificaciones:*".
func (a *App) Register(r *topics.Router[gateway.Handler]) {
	r.Add("sala:*", &Sala{app: a})
	r.Add("notificaciones:*", &Notificaciones{})
}

// Sala is the seed's SalaChannel.
type Sala struct{ app *App }

// errorReason is the {"reason": ...} of a refused join.
func errorReason(reason string) gateway.Reply {
	return gateway.Error(map[string]string{"reason": reason})
}

// Join implements gateway.Handler.
func (s *Sala) Join(c *gateway.Context, payload json.RawMessage) gateway.Reply {
	salaID := strings.TrimPrefix(c.Topic(), "sala:")
	ctx := c.Context()
	switch {
	case salaID == "lobby":
		// Public room: anyone may join.
	case strings.HasPrefix(salaID, "privada:"):
		var p struct {
			Password *string `json:"password"`
		}
		if json.Unmarshal(payload, &p) != nil || p.Password == nil {
			return errorReason(`se esperaba {"password": "..."}`)
		}
		id := strings.TrimPrefix(salaID, "privada:")
		// Count the attempt before checking the password, so that
		// concurrent guesses (several sessions, several instances) cannot
		// all pass the limit at once; a success clears the count.
		n, err := s.app.store.CountJoinAttempt(ctx, id, c.UserKey(), s.app.joinWindow)
		if err != nil {
			c.Logger().Error("join: count attempt", "err", err)
			return errorReason("error interno")
		}
		if n > MaxJoinFailures {
			return errorReason(ReasonTooManyAttempts)
		}
		room, err := s.app.store.Room(ctx, id)
		if errors.Is(err, ErrNoRoom) || err == nil && (room.Password == "" || subtle.ConstantTimeCompare([]byte(room.Password), []byte(*p.Password)) != 1) {
			return errorReason("contraseña incorrecta")
		} else if err != nil {
			c.Logger().Error("join: load room", "err", err)
			return errorReason("error interno")
		}
		if err := s.app.store.ClearJoinAttempts(ctx, id, c.UserKey()); err != nil {
			// The user got in; at worst an old count outlives its use.
			c.Logger().Warn("join: clear attempts", "err", err)
		}
	default:
		room, err := s.app.store.Room(ctx, salaID)
		switch {
		case errors.Is(err, ErrNoRoom):
			return errorReason("acceso denegado")
		case err != nil:
			c.Logger().Error("join: load room", "err", err)
			return errorReason("error interno")
		case !room.HasMember(c.UserKey()):
			return errorReason("no autorizado")
		}
	}
	mensajes, err := s.app.store.LastMessages(ctx, salaID, HistorySize)
	if err != nil {
		c.Logger().Error("join: load history", "err", err)
		return errorReason("error interno")
	}
	if mensajes == nil {
		mensajes = []Mensaje{}
	}
	if err := c.Assign("sala_id", salaID); err != nil {
		return errorReason("error interno")
	}
	return gateway.Ok(map[string]any{"mensajes": mensajes})
}

// meta is the presence meta of a user in a room.
type meta struct {
	Nombre       string `json:"nombre"`
	EnLineaDesde string `json:"en_linea_desde"`
	Estado       string `json:"estado"`
}

// AfterJoin implements gateway.AfterJoiner: track presence, then push
// estado_actual and presence_state, as the seed's handle_info(:after_join).
func (s *Sala) AfterJoin(c *gateway.Context) error {
	m := meta{Nombre: nombre(c), EnLineaDesde: time.Now().UTC().Format(time.RFC3339), Estado: "activo"}
	if err := c.Assign("meta", m); err != nil {
		return err
	}
	if err := c.Track(c.UserKey(), m); err != nil {
		return err
	}
	list, err := c.PresenceList()
	if err != nil {
		return err
	}
	if err := c.Push("estado_actual", map[string]any{"usuarios": usuarios(list)}); err != nil {
		return err
	}
	return c.Push(gateway.EventPresenceState, list)
}

// usuario is one entry of estado_actual's list.
type usuario struct {
	ID     string `json:"id"`
	Nombre string `json:"nombre"`
	Estado string `json:"estado"`
}

// usuarios lists the users present in a room (one per key, newest meta).
func usuarios(list map[string]*gateway.PresenceGroup) []usuario {
	out := []usuario{}
	for key, g := range list {
		var m meta
		if len(g.Metas) > 0 {
			_ = json.Unmarshal(g.Metas[len(g.Metas)-1], &m)
		}
		out = append(out, usuario{ID: key, Nombre: m.Nombre, Estado: m.Estado})
	}
	slices.SortFunc(out, func(a, b usuario) int { return strings.Compare(a.ID, b.ID) })
	return out
}

func nombre(c *gateway.Context) string {
	if n := c.UserName(); n != "" {
		return n
	}
	return "Usuario " + c.UserKey()
}

// nuevoMensaje is the payload of nuevo_mensaje, validated after trimming.
type nuevoMensaje struct {
	Contenido string `json:"contenido" validate:"required,max=2000"`
}

// estadoPayload is the payload of estado.
type estadoPayload struct {
	Estado string `json:"estado" validate:"required,oneof=activo ausente"`
}

// HandleIn implements gateway.Handler.
func (s *Sala) HandleIn(c *gateway.Context, event string, payload json.RawMessage) gateway.Reply {
	switch event {
	case "nuevo_mensaje":
		return s.nuevoMensaje(c, payload)
	case "escribiendo":
		if err := c.BroadcastFrom("usuario_escribiendo", map[string]json.RawMessage{"user_id": c.UserID()}); err != nil {
			c.Logger().Error("escribiendo", "err", err)
		}
		return gateway.NoReply
	case "ping":
		return gateway.Ok(payload)
	case "estado":
		return s.estado(c, payload)
	}
	return gateway.Error(map[string]string{"reason": fmt.Sprintf("evento desconocido: %q", event)})
}

func (s *Sala) nuevoMensaje(c *gateway.Context, payload json.RawMessage) gateway.Reply {
	var in struct {
		Contenido *string `json:"contenido"`
	}
	if json.Unmarshal(payload, &in) != nil {
		return fieldError("contenido", "debe ser un texto")
	}
	var msg nuevoMensaje
	if in.Contenido != nil {
		msg.Contenido = strings.TrimSpace(*in.Contenido)
	}
	if err := s.app.validate.Struct(msg); err != nil {
		var ve validator.ValidationErrors
		if errors.As(err, &ve) && ve[0].Tag() == "max" {
			return fieldError("contenido", "no puede tener más de 2000 caracteres")
		}
		return fieldError("contenido", "no puede estar vacío")
	}
	var salaID string
	c.Assigned("sala_id", &salaID)
	m, err := s.app.store.AddMessage(c.Context(), salaID, Mensaje{
		Contenido: msg.Contenido,
		Autor:     nombre(c),
		Timestamp: time.Now().UTC().Truncate(time.Millisecond),
	})
	if err != nil {
		c.Logger().Error("nuevo_mensaje: store", "err", err)
		return gateway.Error(map[string]string{"reason": "error interno"})
	}
	if err := c.Broadcast("mensaje_recibido", m); err != nil {
		c.Logger().Error("nuevo_mensaje: broadcast", "err", err)
	}
	return gateway.Ok(nil)
}

func (s *Sala) estado(c *gateway.Context, payload json.RawMessage) gateway.Reply {
	var in estadoPayload
	if json.Unmarshal(payload, &in) != nil || s.app.validate.Struct(in) != nil {
		return fieldError("estado", `debe ser "activo" o "ausente"`)
	}
	var m meta
	c.Assigned("meta", &m)
	m.Estado = in.Estado
	if err := c.Assign("meta", m); err != nil {
		return gateway.Error(map[string]string{"reason": "error interno"})
	}
	if err := c.UpdatePresence(c.UserKey(), m); err != nil {
		c.Logger().Error("estado: update presence", "err", err)
		return gateway.Error(map[string]string{"reason": "error interno"})
	}
	return gateway.Ok(map[string]string{"estado": in.Estado})
}

// fieldError is a changeset-style error reply: {"errors": {field: [msg]}}.
func fieldError(field, msg string) gateway.Reply {
	return gateway.Error(map[string]any{"errors": map[string][]string{field: {msg}}})
}

// Notificaciones is the seed's NotificacionChannel: a user's own
// notifications, filtered by the levels the socket subscribed to.
type Notificaciones struct{}

// Join implements gateway.Handler: only the user named by the topic may join;
// {"niveles": [...]} chooses the levels (default: every level).
func (n *Notificaciones) Join(c *gateway.Context, payload json.RawMessage) gateway.Reply {
	if strings.TrimPrefix(c.Topic(), "notificaciones:") != c.UserKey() {
		return errorReason("no autorizado")
	}
	var p struct {
		Niveles *[]string `json:"niveles"`
	}
	if len(payload) > 0 && string(payload) != "null" {
		if err := json.Unmarshal(payload, &p); err != nil {
			return errorReason(`se esperaba {"niveles": ["info", ...]}`)
		}
	}
	// No list means every level, including levels invented later.
	if err := c.Assign("niveles", p.Niveles); err != nil {
		return errorReason("error interno")
	}
	return gateway.Ok(nil)
}

// HandleIn implements gateway.Handler.
func (n *Notificaciones) HandleIn(c *gateway.Context, event string, payload json.RawMessage) gateway.Reply {
	if event == "ping" {
		return gateway.Ok(payload)
	}
	return gateway.Error(map[string]string{"reason": fmt.Sprintf("evento desconocido: %q", event)})
}

// Intercepts implements gateway.Interceptor.
func (n *Notificaciones) Intercepts() []string { return []string{"nueva_notificacion"} }

// HandleOut implements gateway.Interceptor: push a notification only if its
// level is one this socket subscribed to.
func (n *Notificaciones) HandleOut(c *gateway.Context, event string, payload json.RawMessage) error {
	var p struct {
		Nivel string `json:"nivel"`
	}
	_ = json.Unmarshal(payload, &p)
	var niveles *[]string
	c.Assigned("niveles", &niveles)
	if niveles == nil || slices.Contains(*niveles, p.Nivel) {
		return c.Push(event, payload)
	}
	return nil
}
