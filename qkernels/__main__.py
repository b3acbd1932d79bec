"""``python -m qkernels``: print the configuration a bug report needs (``qk.show_config()``)."""

from ._show import show_config

show_config()
