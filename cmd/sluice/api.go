package main

import (
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/go-playground/validator/v10"
	"github.com/labstack/echo/v4"

	"github.com/sluicegw/sluice/internal/httpjson"
)

var validate = validator.New(validator.WithRequiredStructEnabled())

// apiKeys says which bearer keys may call which /api routes: a key given
// with --api-key opens every route; a key given in --api-keys opens the
// routes it names, so that, say, a backend that only broadcasts holds a key
// that cannot disconnect users or rewrite rooms.
type apiKeys struct {
	all     []byte
	byRoute map[string][][]byte
}

// parseAPIKeys reads --api-keys: comma-separated route=key pairs, where route
// is the first path segment under /api/ ("broadcast", "disconnect", "salas")
// and must be one of known.
func parseAPIKeys(all, scoped string, known []string) (*apiKeys, error) {
	k := &apiKeys{byRoute: map[string][][]byte{}}
	if all != "" {
		k.all = []byte(all)
	}
	for _, pair := range strings.Split(scoped, ",") {
		if pair = strings.TrimSpace(pair); pair == "" {
			continue
		}
		route, key, ok := strings.Cut(pair, "=")
		route, key = strings.TrimSpace(route), strings.TrimSpace(key)
		switch {
		case !ok || key == "":
			return nil, fmt.Errorf("--api-keys: %q is not route=key", pair)
		case !slices.Contains(known, route):
			return nil, fmt.Errorf("--api-keys: unknown route %q (routes: %s)", route, strings.Join(known, ", "))
		}
		k.byRoute[route] = append(k.byRoute[route], []byte(key))
	}
	return k, nil
}

// enabled reports whether any key was configured.
func (k *apiKeys) enabled() bool { return k.all != nil || len(k.byRoute) > 0 }

// allows reports whether key may call route, comparing in constant time.
func (k *apiKeys) allows(route, key string) bool {
	ok := false
	if k.all != nil && subtle.ConstantTimeCompare([]byte(key), k.all) == 1 {
		ok = true
	}
	for _, want := range k.byRoute[route] {
		if subtle.ConstantTimeCompare([]byte(key), want) == 1 {
			ok = true
		}
	}
	return ok
}

// apiRoute is the first path segment under /api/ of a registered route path
// ("/api/salas/:id" → "salas").
func apiRoute(path string) string {
	rest := strings.TrimPrefix(path, "/api/")
	route, _, _ := strings.Cut(rest, "/")
	return route
}

// requireAPIKey guards /api/*: Authorization: Bearer <api key>, with a key
// that opens the route called.
func (s *server) requireAPIKey(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if !s.apiKeys.enabled() {
			s.gw.Observer().Refused("api", "disabled")
			return echo.NewHTTPError(http.StatusForbidden, "the HTTP API is disabled: start sluice with --api-key (or --api-keys)")
		}
		route := apiRoute(c.Path())
		key, ok := trimBearer(c.Request().Header.Get("Authorization"))
		if !ok {
			s.gw.Observer().Refused("api", "unauthorized")
			c.Response().Header().Set("WWW-Authenticate", `Bearer realm="sluice"`)
			return echo.NewHTTPError(http.StatusUnauthorized, "missing API key: send Authorization: Bearer <api key>")
		}
		if !s.apiKeys.allows(route, key) {
			s.gw.Observer().Refused("api", "unauthorized")
			c.Response().Header().Set("WWW-Authenticate", `Bearer realm="sluice", error="invalid_token"`)
			return echo.NewHTTPError(http.StatusUnauthorized, "wrong API key, or a key that does not open /api/"+route)
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

// bindJSON decodes a request body strictly and validates it, with errors
// that name the field and what it needs.
func bindJSON(c echo.Context, dst any, shape string) error {
	if err := httpjson.Decode(c.Request().Body, dst, shape); err != nil {
		return echo.NewHTTPError(http.StatusBadRequest, err.Error())
	}
	if err := httpjson.Validate(validate, dst); err != nil {
		return echo.NewHTTPError(http.StatusBadRequest, err.Error()+": expected "+shape)
	}
	return nil
}

// jsonSerializer is echo's JSON serializer without HTML escaping: answers
// are application/json (never HTML), and error strings are read in
// terminals, where "Bearer \u003capi key\u003e" helps nobody.
type jsonSerializer struct{ echo.DefaultJSONSerializer }

// Serialize implements echo.JSONSerializer.
func (jsonSerializer) Serialize(c echo.Context, i any, indent string) error {
	enc := json.NewEncoder(c.Response())
	enc.SetEscapeHTML(false)
	if indent != "" {
		enc.SetIndent("", indent)
	}
	return enc.Encode(i)
}

func (s *server) apiBroadcast(c echo.Context) error {
	var req broadcastRequest
	if err := bindJSON(c, &req, `{"topic": string, "event": string, "payload"?: object}`); err != nil {
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
