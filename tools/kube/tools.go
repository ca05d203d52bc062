//go:build tools

// Package tools pins the Kubernetes commands that `make kube-tools` builds
// (kube-apiserver, kube-controller-manager); see README.md. Nothing here is
// compiled: the import lines keep the commands' dependencies in go.mod/go.sum.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
