"""Package list for setuptools (the rest of the metadata is in pyproject.toml).

tagging/, buckets/ and trainer/ are top-level folders of the repository (the design's shape) but
subpackages of curate once installed, so that installing curate adds only the `curate` import
name to an environment. find_packages keeps the list in step with the folders.
"""

from setuptools import find_packages, setup

MAPPED = ("tagging", "buckets", "trainer")

packages = find_packages(include=["curate", "curate.*"])
for top in MAPPED:
    packages += ["curate." + name for name in find_packages(include=[top, top + ".*"])]

setup(packages=packages, package_dir={"curate": "curate", **{"curate." + top: top for top in MAPPED}})
