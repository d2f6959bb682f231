// Command k4s is the Kubernetes userland of a k4sinit node in one statically linked
// binary with one Go runtime, dispatched on the base name of argv[0] as u-root's
// busybox is: /bbin/kubelet -> k4s runs the kubelet. "k4s ROLE ARGS..." does the same
// without a link. Each role is the upstream program's own main, unmodified.
//
// Exit codes: a role's own; 2 for an unknown role or no role.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strings"
)

// roles maps a role name to its upstream entry point, which reads os.Args and
// returns the exit code. One role runs per process: Kubernetes' signal handling
// (SetupSignalContext) may be set up only once.
var roles = map[string]func() int{
	"kube-apiserver":          kubeAPIServer,
	"kube-scheduler":          kubeScheduler,
	"kube-controller-manager": kubeControllerManager,
	"kubelet":                 kubelet,
	"kube-proxy":              kubeProxy,
	"kubectl":                 kubectl,
	"containerd":              containerd,
	"ctr":                     ctr,
	"kine":                    kine,
	"etcd":                    etcd,
	"coredns":                 coredns,
}

// modules names the upstream modules whose versions "k4s --versions" reports.
var modules = map[string]string{
	"kubernetes": "k8s.io/kubernetes",
	"containerd": "github.com/containerd/containerd/v2",
	"kine":       "github.com/k3s-io/kine",
	"etcd":       "go.etcd.io/etcd/server/v3",
	"coredns":    "github.com/coredns/coredns",
}

func main() {
	name := filepath.Base(os.Args[0])
	if name == "k4s" {
		if len(os.Args) < 2 {
			usage()
			os.Exit(2)
		}
		switch os.Args[1] {
		case "--list":
			fmt.Println(strings.Join(roleNames(), "\n"))
			return
		case "--versions":
			printVersions()
			return
		}
		os.Args = os.Args[1:]
		name = os.Args[0]
	}
	run, ok := roles[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "k4s: unknown role %q\n", name)
		usage()
		os.Exit(2)
	}
	os.Exit(run())
}

func roleNames() []string {
	names := make([]string, 0, len(roles))
	for name := range roles {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

func usage() {
	fmt.Fprintf(os.Stderr, "usage: k4s ROLE [ARGS...] (or a link named ROLE)\n"+
		"       k4s --list | --versions\nroles: %s\n", strings.Join(roleNames(), ", "))
}

// printVersions prints the Go version and the upstream modules' versions as one JSON
// object, read from the build info the Go linker embeds.
func printVersions() {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		fmt.Fprintln(os.Stderr, "k4s: no build info in this binary")
		os.Exit(1)
	}
	byPath := map[string]string{}
	for _, dep := range info.Deps {
		if dep.Replace != nil {
			dep = dep.Replace
		}
		byPath[dep.Path] = dep.Version
	}
	out := map[string]string{"go": info.GoVersion}
	for name, path := range modules {
		out[name] = byPath[path]
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		os.Exit(1)
	}
}
