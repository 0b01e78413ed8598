"""Ray Serve applications of twotier."""
