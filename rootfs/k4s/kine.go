package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	kineapp "github.com/k3s-io/kine/pkg/app"
)

// kine is github.com/k3s-io/kine's main. Built with CGO_ENABLED=0 its sqlite driver is
// modernc.org/sqlite, pure Go.
func kine() int {
	if err := kineapp.New().Run(os.Args); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "kine:", err)
		return 1
	}
	return 0
}
