"""Packages and the config tree; everything else is in pyproject.toml.

The Hydra configs live in conf/ at the top of the repository (where users look for them) and are
shipped inside the package as icolightning/conf, so an installed wheel finds them next to its code
(`icolightning.jobs.common.find_config_dir`). pyproject.toml cannot map a folder onto a
sub-package while also discovering packages, hence this file.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["icolightning", "icolightning.*", "datamodules", "datamodules.*"]),
              "icolightning.conf"],
    package_dir={"icolightning.conf": "conf"},
    package_data={"icolightning.conf": ["*.yaml", "*/*.yaml"]},
)
