"""Triton kernels that decode packed tensors on the GPU.

Nothing is imported here: `unweight.kernels.decode` imports Triton, which is optional, so
callers import it where they need it (e.g. `from unweight.kernels.decode import decode_lanes`).
"""
