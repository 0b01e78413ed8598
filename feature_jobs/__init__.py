"""The Spark feature jobs of twotier."""
