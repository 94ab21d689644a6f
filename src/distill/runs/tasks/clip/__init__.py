"""``task: clip``: an image tower distilled against a fixed text tower."""
