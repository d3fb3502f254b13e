"""niche: turn a small open language model into a measured domain specialist."""

__version__ = "0.1.0"
