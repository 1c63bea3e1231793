package chat

import (
	"encoding/json"
	"net/http"
	"regexp"

	"github.com/labstack/echo/v4"

	"github.com/sluicegw/sluice/internal/httpjson"
)

// roomID is what a room id may look like: it becomes part of a topic.
var roomID = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// putRoomRequest is the body of PUT /api/salas/<id>.
type putRoomRequest struct {
	Password *string           `json:"password" validate:"omitempty,min=1,max=200"`
	Miembros []json.RawMessage `json:"miembros" validate:"max=10000"`
}

// RegisterAPI mounts the app's HTTP API on g (already behind the API key):
// PUT /salas/:id creates or replaces a room.
func (a *App) RegisterAPI(g *echo.Group) {
	g.PUT("/salas/:id", a.putRoom)
}

func (a *App) putRoom(c echo.Context) error {
	id := c.Param("id")
	if !roomID.MatchString(id) {
		return echo.NewHTTPError(http.StatusBadRequest, "room id must be 1-64 letters, digits, '-' or '_'")
	}
	var req putRoomRequest
	const shape = `{"password"?: string, "miembros"?: [user ids]}`
	if err := httpjson.Decode(c.Request().Body, &req, shape); err != nil {
		return echo.NewHTTPError(http.StatusBadRequest, err.Error())
	}
	if err := httpjson.Validate(a.validate, req); err != nil {
		return echo.NewHTTPError(http.StatusBadRequest, err.Error()+": expected "+shape)
	}
	room := Room{ID: id, Members: []string{}}
	if req.Password != nil {
		room.Password = *req.Password
	}
	for _, m := range req.Miembros {
		key, ok := memberKey(m)
		if !ok {
			return echo.NewHTTPError(http.StatusBadRequest, "miembros must hold user ids (integers or strings), got "+string(m))
		}
		room.Members = append(room.Members, key)
	}
	if err := a.store.PutRoom(c.Request().Context(), room); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"id": room.ID, "privada": room.Password != "", "miembros": room.Members})
}

// memberKey turns a user id given as a JSON integer or string into its key.
func memberKey(raw json.RawMessage) (string, bool) {
	var s string
	if json.Unmarshal(raw, &s) == nil && s != "" {
		return s, true
	}
	var n json.Number
	if json.Unmarshal(raw, &n) == nil {
		if _, err := n.Int64(); err == nil {
			return n.String(), true
		}
	}
	return "", false
}
