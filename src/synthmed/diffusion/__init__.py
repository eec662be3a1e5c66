"""Diffusion building blocks: noise schedules and samplers shared by the diffusion methods."""

from synthmed.diffusion.schedule import NoiseSchedule
from synthmed.diffusion.samplers import SAMPLERS, sample

__all__ = ["NoiseSchedule", "SAMPLERS", "sample"]
