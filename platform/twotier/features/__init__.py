"""Feature groups, model features and the feature store API of twotier."""
