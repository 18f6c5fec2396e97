//go:build tools

// Package kuberouter pins kube-router, whose network policy controller enforces the ChatBots'
// NetworkPolicies on the test bed's real node. v2.1.0 is the release the module proxy serves;
// go.mod raises its golang.org/x dependencies past their reported vulnerabilities.
package kuberouter

import _ "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"
