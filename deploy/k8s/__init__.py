"""Kubernetes tooling for the Helm chart: cached helm / kube-apiserver / etcd builds, a local API server."""
