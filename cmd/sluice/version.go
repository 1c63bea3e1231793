package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// version is the release this binary was built as. scripts/build.sh sets it
// with -ldflags "-X main.version=..." (from SLUICE_VERSION or git describe);
// a plain go build says "dev".
var version = "dev"

// commit is the commit it was built from when the Go toolchain could not
// stamp it (a build outside a git checkout, such as a Docker context without
// .git): scripts/build.sh sets it with -ldflags "-X main.commit=...".
var commit = ""

// versionString is what `sluice version` prints: the version, the commit
// (with -dirty when the checkout had uncommitted changes) and the Go version.
func versionString() string {
	rev, modified := commit, false
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	if rev == "" {
		rev = "unknown"
	}
	if modified {
		rev += "-dirty"
	}
	return fmt.Sprintf("sluice %s (commit %s, %s)", version, rev, runtime.Version())
}
