# The repository keeps services/ and shared/ at its root (the project's layout), but they
# install as subpackages of one package, `leadsla`, so nothing generic like `shared` lands
# in site-packages.
from setuptools import find_packages, setup

setup(
    packages=["leadsla"] + [f"leadsla.{p}" for p in find_packages(include=["services*", "shared*"])],
    package_dir={"leadsla": "leadsla", "leadsla.services": "services", "leadsla.shared": "shared"},
)
