"""Rankers assembled from unimixer_kernels.nn."""
