"""The model server: a BentoML service for one model version, with the Open Inference
Protocol v2, micro-batching and live drift monitoring.
"""
