// Command etcd: the etcd server of go.etcd.io/etcd/server/v3, started as etcd's own main does.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
