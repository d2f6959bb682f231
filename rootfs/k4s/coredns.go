package main

import (
	"github.com/coredns/coredns/coremain"

	// The plugins a cluster DNS server uses (the Corefile k4sinit writes and
	// kubeadm's default one), not the whole upstream set: the cloud backends
	// (route53, azure, clouddns) would add their SDKs to every role's binary.
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/hosts"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
	_ "github.com/coredns/coredns/plugin/rewrite"
	_ "github.com/coredns/coredns/plugin/template"
	_ "github.com/coredns/coredns/plugin/whoami"
)

// coredns is github.com/coredns/coredns's main with the plugins above.
func coredns() int {
	coremain.Run()
	return 0
}
