"""Registers vitlab's own loss terms and model transforms with ``vitlab.train.extensions``."""
