"""Only the extension modules; metadata lives in pyproject.toml."""
from setuptools import setup

setup()
