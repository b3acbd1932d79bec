"""End-to-end runs of the five methods: ``python -m training METHOD`` (see training/cli.py)."""
