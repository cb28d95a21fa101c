"""Lists the packages for pyproject.toml's package-dir mapping: agent/, hub/ and app/ (and
their subpackages) install under the one import name ``edgeloop``. Everything else is in
pyproject.toml."""

from setuptools import find_packages, setup

TOP = ("agent", "hub", "app")
setup(packages=["edgeloop"] + [f"edgeloop.{p}" for p in find_packages(include=[f"{t}{s}" for t in TOP
                                                                              for s in ("", ".*")])])
