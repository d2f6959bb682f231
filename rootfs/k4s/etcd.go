package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

// etcd is go.etcd.io/etcd/server/v3's main (for node.datastore: etcd). kine
// already links most of etcd's server packages, so it adds little.
func etcd() int {
	etcdmain.Main(os.Args)
	return 0
}
