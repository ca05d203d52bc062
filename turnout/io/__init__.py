"""turnout's adapters to the world: the Kubernetes API, the local file store, the process
settings and local processes.

The floor above the pure core: services, workflows and the command line reach files, the
cluster and the environment through these modules, so each has one place to fake in tests.
"""
