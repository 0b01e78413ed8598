"""Starting the local stack of real services."""
