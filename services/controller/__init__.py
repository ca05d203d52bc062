"""The rollout controller, as a kopf operator in a cluster and as a file-backed loop on a
laptop: fetch → decide (the pure ``turnout.core.rollout.decide``) → apply, with metrics from
Prometheus or from direct scrapes.
"""
