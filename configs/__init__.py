"""Bundled YAML configs, one per algorithm x environment."""
