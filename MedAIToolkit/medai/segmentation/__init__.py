"""Segmentation: task registry, networks, inference, metrics."""
