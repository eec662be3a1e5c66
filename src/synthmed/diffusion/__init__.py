"""Diffusion building blocks: noise schedules and samplers shared by the diffusion methods."""

from synthmed.diffusion.samplers import SAMPLERS, sample
from synthmed.diffusion.schedule import NoiseSchedule

__all__ = ["NoiseSchedule", "SAMPLERS", "sample"]
