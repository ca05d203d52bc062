//go:build tools

// Package tools pins kine (an etcd v3 API over sqlite/memory) that
// `make kube-tools` builds. It is a module of its own because kine follows
// newer k8s.io/* modules than k8s.io/kubernetes v1.34 pins.
package tools

import (
	_ "github.com/k3s-io/kine"
)
