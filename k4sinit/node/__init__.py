"""The Kubernetes node: profile expansion into role services, node files, the PKI and its condition, preflight."""
