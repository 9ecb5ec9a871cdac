"""Readers and writers, datasets, samplers, transforms and the embedded synthetic datasets."""
