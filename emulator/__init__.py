"""Emulated Kubernetes pieces (network namespaces, cluster DNS) for the e2e tests and the demo."""
