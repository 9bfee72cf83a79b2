"""Slurm clusters, reached through their login node over SSH (see platform.py)."""
