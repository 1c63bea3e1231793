package main

import (
	"crypto/subtle"
	"encoding/json"
	"net/http"

	"github.com/go-playground/validator/v10"
	"github.com/labstack/echo/v4"
)

var validate = validator.New(validator.WithRequiredStructEnabled())

// requireAPIKey guards /api/*: Authorization: Bearer <api key>.
func (s *server) requireAPIKey(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if s.cfg.APIKey == "" {
			return echo.NewHTTPError(http.StatusForbidden, "the HTTP API is disabled: start sluice with --api-key or SLUICE_API_KEY")
		}
		key, ok := trimBearer(c.Request().Header.Get("Authorization"))
		if !ok || subtle.ConstantTimeCompare([]byte(key), []byte(s.cfg.APIKey)) != 1 {
			c.Response().Header().Set("WWW-Authenticate", `Bearer realm="sluice"`)
			return echo.NewHTTPError(http.StatusUnauthorized, "missing or wrong API key: send Authorization: Bearer <api key>")
		}
		return next(c)
	}
}

// broadcastRequest is the body of POST /api/broadcast.
type broadcastRequest struct {
	Topic   string          `json:"topic" validate:"required,max=255"`
	Event   string          `json:"event" validate:"required,max=255"`
	Payload json.RawMessage `json:"payload"`
}

// disconnectRequest is the body of POST /api/disconnect.
type disconnectRequest struct {
	SocketID string `json:"socket_id" validate:"required,max=255"`
}

func (s *server) registerAPI(g *echo.Group) {
	g.POST("/broadcast", s.apiBroadcast)
	g.POST("/disconnect", s.apiDisconnect)
}

// bindJSON decodes a request body strictly and validates it.
func bindJSON(c echo.Context, dst any, shape string) error {
	dec := json.NewDecoder(c.Request().Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return echo.NewHTTPError(http.StatusBadRequest, "body must be JSON "+shape+": "+err.Error())
	}
	if err := validate.Struct(dst); err != nil {
		return echo.NewHTTPError(http.StatusBadRequest, err.Error())
	}
	return nil
}

func (s *server) apiBroadcast(c echo.Context) error {
	var req broadcastRequest
	if err := bindJSON(c, &req, `{"topic": string, "event": string, "payload": object}`); err != nil {
		return err
	}
	if len(req.Payload) == 0 || string(req.Payload) == "null" {
		req.Payload = json.RawMessage(`{}`)
	}
	if req.Payload[0] != '{' {
		return echo.NewHTTPError(http.StatusBadRequest, "payload must be a JSON object")
	}
	if err := s.gw.Broadcast(c.Request().Context(), req.Topic, req.Event, req.Payload); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"ok": true})
}

func (s *server) apiDisconnect(c echo.Context) error {
	var req disconnectRequest
	if err := bindJSON(c, &req, `{"socket_id": "user_socket:<id>"}`); err != nil {
		return err
	}
	n, err := s.gw.Disconnect(c.Request().Context(), req.SocketID)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"disconnected": n})
}
