"""Torch-free preprocessing, one module per backbone, reproducing each family's processor in numpy."""
