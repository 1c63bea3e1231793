package main

import (
	"fmt"
	"io"
	"net/http"
	"time"
)

// healthcheckCommand GETs a URL and exits 0 on a 2xx answer: the Docker
// HEALTHCHECK of an image that has no curl.
func healthcheckCommand(args []string, stdout, stderr io.Writer) error {
	var url string
	var timeout time.Duration
	fs := newFlagSet("healthcheck", "Exits 0 if the URL answers 2xx within the timeout, else 1 (for Docker's HEALTHCHECK).", stderr)
	fs.string(&url, "url", "", "http://127.0.0.1:4000/healthz", "the URL to check")
	fs.duration(&timeout, "timeout", "", 3*time.Second, "how long to wait")
	if err := fs.parse(args); err != nil {
		return err
	}
	client := &http.Client{Timeout: timeout}
	resp, err := client.Get(url)
	if err != nil {
		return fmt.Errorf("unhealthy: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("unhealthy: %s answered %s", url, resp.Status)
	}
	_, err = fmt.Fprintln(stdout, "healthy")
	return err
}
