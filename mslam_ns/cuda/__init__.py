"""Compiled kernels (CPU and CUDA builds of the same per-element math) and their PyTorch twins.

Public ops live in the feature folders: `mslam_ns.cuda.matching` (projective matching, descriptor
refinement) and `mslam_ns.cuda.gn` (Gauss-Newton normal equations on Sim(3)). Only `_backend` knows how
they are built; importing this package compiles nothing.
"""
