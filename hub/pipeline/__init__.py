"""From a dataset to a signed bundle: train + export + register a version, then pack
and sign its bundle. Files are written before the registry rows that point to them."""

from edgeloop.hub.pipeline.bundle import BundleBuild, build_bundle
from edgeloop.hub.pipeline.version import ParentSpec, VersionBuild, build_version

__all__ = ["BundleBuild", "ParentSpec", "VersionBuild", "build_bundle", "build_version"]
