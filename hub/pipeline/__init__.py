"""From a dataset to a signed bundle: train + export + register a version, then pack
and sign its bundle. Files are written before the registry rows that point to them.

The names are imported when first used (PEP 562): packing a bundle of an exported version
(:mod:`.bundle`) needs no torch, and the desktop app's process -- which deploys but trains in a
worker process -- must not pay torch's import (hundreds of ms holding the GIL) on its first deploy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgeloop.hub.lazy import lazy_exports

if TYPE_CHECKING:
    from edgeloop.hub.pipeline.bundle import BundleBuild, build_bundle
    from edgeloop.hub.pipeline.version import ParentSpec, VersionBuild, build_version

__all__ = ["BundleBuild", "ParentSpec", "VersionBuild", "build_bundle", "build_version"]

_WHERE = {"BundleBuild": "bundle", "build_bundle": "bundle", "ParentSpec": "version", "VersionBuild": "version",
          "build_version": "version"}


__getattr__ = lazy_exports(__name__, _WHERE)
