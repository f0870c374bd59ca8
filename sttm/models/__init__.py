"""Reducers inside real transformers models: tiny offline models and the hooks that reduce visual tokens."""
