"""The install is described three times: settings.ini (ranges, for pip users installing into their own environment),
requirements-lock.txt (the exact versions the README's commands and CI install) and environment.yml (conda: the lock).
They must agree, and the environment running the tests must be the locked one."""
import re
from configparser import ConfigParser
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
NOT_LOCKED = {"pip", "setuptools", "wheel", "reid-nb"}   # pip freeze leaves out pip's own tools; reid-nb is the checkout


def settings_requirements(root=ROOT):
    cfg = ConfigParser(delimiters=["="])
    cfg.read(root / "settings.ini", encoding="utf-8")
    d = cfg["DEFAULT"]
    return [Requirement(r) for r in (d["requirements"] + " " + d["dev_requirements"]).split()]


def lock(root=ROOT) -> dict:
    "name -> exact version, from requirements-lock.txt"
    out = {}
    for line in (root / "requirements-lock.txt").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"): continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        assert m, f"requirements-lock.txt: not an exact pin: {line!r}"
        out[canonicalize_name(m[1])] = m[2]
    return out


def lock_violations(root=ROOT):
    "Requirements of settings.ini that the lock lacks or pins outside their range."
    pins, out = lock(root), []
    for r in settings_requirements(root):
        name = canonicalize_name(r.name)
        if name not in pins: out.append(f"{r}: not in requirements-lock.txt")
        elif not r.specifier.contains(pins[name], prereleases=True): out.append(f"{r}: the lock pins {pins[name]}")
    return out


def test_lock_satisfies_settings():
    assert lock_violations() == []


def test_lock_violation_is_noticed(tmp_path):
    "The check above can fail: a lock pinning timm outside settings.ini's range, and one without tqdm."
    (tmp_path / "settings.ini").write_text((ROOT / "settings.ini").read_text(encoding="utf-8"), encoding="utf-8")
    text = (ROOT / "requirements-lock.txt").read_text(encoding="utf-8")
    text = re.sub(r"(?m)^timm==.*$", "timm==0.9.16", text)
    text = re.sub(r"(?m)^tqdm==.*\n", "", text)
    (tmp_path / "requirements-lock.txt").write_text(text, encoding="utf-8")
    found = lock_violations(tmp_path)
    assert any(m.startswith("timm>=") and "pins 0.9.16" in m for m in found), found
    assert any(m.startswith("tqdm") and "not in requirements-lock.txt" in m for m in found), found


def installed() -> dict:
    return {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}


def test_install_matches_lock():
    "The environment running the tests is the locked one: every pin installed at its version, nothing else installed."
    have, want = installed(), lock()
    wrong = [f"{n}: installed {have.get(n, 'nothing')}, the lock says {v}" for n, v in sorted(want.items()) if have.get(n) != v]
    extra = [f"{n}=={v}: installed but not in the lock" for n, v in sorted(have.items()) if n not in want and n not in NOT_LOCKED]
    assert not wrong + extra, ("this environment is not requirements-lock.txt's (install with "
                               "pip install -c requirements-lock.txt -e \".[dev]\", or refresh the lock with bash .ci/lock):\n"
                               + "\n".join(wrong + extra))


def test_environment_yml_installs_the_lock():
    env = yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "python=3.11" in conda and "pip" in conda and len(conda) == 2, conda   # every other package comes from the lock
    assert pip == ["-c requirements-lock.txt", "-e .[dev]"], pip


def test_readme_and_ci_install_the_lock():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    installs = re.findall(r"pip install [^&\n`]*-e \"\.\[dev\]\"", readme)
    assert installs and all("-c requirements-lock.txt" in i for i in installs), installs
    assert '-c requirements-lock.txt -e ".[dev]"' in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_package_importable_and_versioned():
    import reid_nb
    cfg = ConfigParser(delimiters=["="])
    cfg.read(ROOT / "settings.ini", encoding="utf-8")
    assert reid_nb.__version__ == cfg["DEFAULT"]["version"]
