"""Deployment tooling: Kubernetes manifests (k8s/, k8s-dev/) and the container smoke test (python -m deploy.smoke)."""
