"""tubelet.diffusion"""
