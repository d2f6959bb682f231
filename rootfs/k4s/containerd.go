package main

import (
	"context"
	"fmt"
	"os"

	_ "github.com/containerd/containerd/v2/cmd/containerd/builtins"
	containerdcmd "github.com/containerd/containerd/v2/cmd/containerd/command"
	ctrapp "github.com/containerd/containerd/v2/cmd/ctr/app"
)

// The entry points of github.com/containerd/containerd/v2/cmd/{containerd,ctr}.
// containerd-shim-runc-v2 is not here: it re-executes itself through
// /proc/self/exe, so it is a binary of its own (see build.sh).

func containerd() int {
	if err := containerdcmd.App().Run(context.Background(), os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "containerd:", err)
		return 1
	}
	return 0
}

func ctr() int {
	if err := ctrapp.New().Run(context.Background(), os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "ctr:", err)
		return 1
	}
	return 0
}
