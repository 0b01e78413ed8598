"""twotier: an ML platform for two-tier recommender systems."""

__version__ = "0.1.0"
