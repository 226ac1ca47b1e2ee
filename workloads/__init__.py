"""Workloads that cotrain co-runs: the inference service and training jobs.

Installed as `cotrain.workloads`.
"""
