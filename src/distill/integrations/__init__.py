"""Integrations with the training frameworks practitioners already use."""
