"""Local mode: one ChatBot spec run as local processes, without Kubernetes."""
