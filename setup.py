"""Build script: all metadata lives in settings.ini (nbdev 2's single source of truth).

Adapted from the shape of nbdev 2's template, without `pkg_resources` (removed from
setuptools >= 82): requirement strings are checked with `packaging` instead.
"""
from configparser import ConfigParser
from pathlib import Path

import setuptools
from packaging.requirements import Requirement

cfg = ConfigParser(delimiters=["="])
cfg.read(Path(__file__).parent / "settings.ini", encoding="utf-8")
cfg = cfg["DEFAULT"]

for key in ("version", "description", "lib_name", "min_python", "license", "user", "author", "author_email"):
    if key not in cfg:
        raise SystemExit(f"settings.ini: missing required key {key!r}")


def reqs(key):
    "Requirements listed (space separated) under `key` in settings.ini, validated."
    out = cfg.get(key, "").split()
    for r in out:
        Requirement(r)  # raises InvalidRequirement with the offending string
    return out


licenses = {"apache2": ("Apache Software License 2.0", "OSI Approved :: Apache Software License")}
lic = licenses[cfg["license"]]
statuses = ["1 - Planning", "2 - Pre-Alpha", "3 - Alpha", "4 - Beta", "5 - Production/Stable"]
py_versions = "3.10 3.11 3.12 3.13".split()
min_python = cfg["min_python"]
scripts = [s for s in cfg.get("console_scripts", "").split() if s]

setuptools.setup(
    name=cfg["lib_name"].replace("_", "-"),
    version=cfg["version"],
    description=cfg["description"],
    long_description=(Path(__file__).parent / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    author=cfg["author"],
    author_email=cfg["author_email"],
    license=lic[0],
    url=cfg["git_url"],
    keywords=cfg["keywords"].split(),
    classifiers=[
        "Development Status :: " + statuses[int(cfg["status"])],
        "Intended Audience :: " + cfg["audience"].title(),
        "License :: " + lic[1],
        "Natural Language :: " + cfg["language"].title(),
        "Topic :: Scientific/Engineering :: Image Recognition",
    ]
    + [f"Programming Language :: Python :: {v}" for v in py_versions[py_versions.index(min_python):]],
    packages=setuptools.find_packages(include=[cfg["lib_name"], cfg["lib_name"] + ".*"]),
    include_package_data=True,
    python_requires=">=" + min_python,
    install_requires=reqs("requirements"),
    extras_require={"dev": reqs("dev_requirements")},
    entry_points={
        "console_scripts": scripts,
        "nbdev": [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"],
    },
    zip_safe=False,
)
