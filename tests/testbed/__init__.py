"""The test bed: real servers (Kubernetes control plane, Redis, llama.cpp) started on free
ports for a test session, or by hand with `make testenv`.
"""
