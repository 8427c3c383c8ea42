"""The install is described twice (settings.ini for pip, environment.yml for conda): they must agree."""
import re
from configparser import ConfigParser
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PIP = {"pytorch": "torch"}


def settings_requirements(root=ROOT):
    cfg = ConfigParser(delimiters=["="])
    cfg.read(root / "settings.ini", encoding="utf-8")
    d = cfg["DEFAULT"]
    reqs = [Requirement(r) for r in (d["requirements"] + " " + d["dev_requirements"]).split()]
    return {r.name.lower(): str(r.specifier) for r in reqs}


def environment_requirements(root=ROOT):
    env = yaml.safe_load((root / "environment.yml").read_text(encoding="utf-8"))
    out = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for r in dep["pip"]:
                if r.startswith("-e"): continue
                req = Requirement(r)
                out[req.name.lower()] = str(req.specifier)
        else:
            name, spec = re.match(r"^([A-Za-z0-9_.-]+)\s*(.*)$", dep).groups()
            if name in ("python", "pip"): continue
            out[CONDA_TO_PIP.get(name, name).lower()] = spec.strip()
    return out


def mismatches(root=ROOT):
    s, e = settings_requirements(root), environment_requirements(root)
    out = [f"only in settings.ini: {n}{s[n]}" for n in sorted(set(s) - set(e))]
    out += [f"only in environment.yml: {n}{e[n]}" for n in sorted(set(e) - set(s))]
    out += [f"{n}: settings.ini {s[n]!r} vs environment.yml {e[n]!r}" for n in sorted(set(s) & set(e)) if s[n] != e[n]]
    return out


def test_environment_matches_settings():
    assert mismatches() == []


def test_drift_is_noticed(tmp_path):
    "The check above can fail: drop one package and change one pin in a copy of environment.yml."
    (tmp_path / "settings.ini").write_text((ROOT / "settings.ini").read_text(encoding="utf-8"), encoding="utf-8")
    env = (ROOT / "environment.yml").read_text(encoding="utf-8")
    env = env.replace("      - tqdm>=4.60\n", "").replace("timm>=1.0", "timm>=0.9")
    (tmp_path / "environment.yml").write_text(env, encoding="utf-8")
    found = mismatches(tmp_path)
    assert any("only in settings.ini: tqdm" in m for m in found), found
    assert any(m.startswith("timm:") for m in found), found


def test_package_importable_and_versioned():
    import reid_nb
    cfg = ConfigParser(delimiters=["="])
    cfg.read(ROOT / "settings.ini", encoding="utf-8")
    assert reid_nb.__version__ == cfg["DEFAULT"]["version"]
