package main

import (
	"strings"

	"github.com/labstack/echo/v4"
)

// noStore marks every answer under /socket/ as never to be stored by a
// cache, errors (404, 405) included: they name sessions and carry replies.
// It sets the header before the handler runs, so a transport that wants a
// more specific one (the event stream's "no-cache, no-store, no-transform",
// LongPoll's "no-store, private") replaces it.
func noStore(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if strings.HasPrefix(c.Request().URL.Path, "/socket/") {
			c.Response().Header().Set("Cache-Control", "no-store")
		}
		return next(c)
	}
}
