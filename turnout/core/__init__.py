"""turnout's pure core: the schemas, the rollout decisions and the statistics they rest on.

No I/O, no clock, no randomness, no HTTP or Kubernetes client (an import-linter contract
keeps it so): every function takes what it needs and returns what to do, so the operator,
the laptop's loop, the router and the command line share one meaning and each decision is
a table-driven test.
"""
