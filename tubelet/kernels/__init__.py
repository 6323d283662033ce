"""Kernel choices applied to a built model from outside it (like parallelism).

    from tubelet.kernels import apply_cpu_kernels
    apply_cpu_kernels(model)      # oneDNN inner products / convolutions on the CPU; returns the model

Model code stays plain PyTorch; see `tubelet.kernels.cpu` for what is installed and why.
"""

from __future__ import annotations

from tubelet.kernels.cpu import apply_cpu_kernels, cpu_kernels_applied, remove_cpu_kernels

__all__ = ["apply_cpu_kernels", "cpu_kernels_applied", "remove_cpu_kernels"]
