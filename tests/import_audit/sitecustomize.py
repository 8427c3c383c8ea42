"""Imported at start-up by every Python process whose PYTHONPATH holds this folder (tests/test_pipeline.py sets it for
`dvc repro`): with REID_NB_IMPORT_LOG set, each `reid_nb` module a process loads (by an import statement or by
importlib) is appended to
REID_NB_IMPORT_LOG/<pid>.txt together with the DVC stage that runs the process (DVC sets DVC_STAGE for every stage
command, and the report's Jupyter kernel inherits it)."""
import os
import sys

_log = os.environ.get("REID_NB_IMPORT_LOG")


class _Recorder:
    "A meta-path finder that finds nothing and records each reid_nb module being loaded (import statements and importlib alike)."
    def find_spec(self, name, path=None, target=None):
        if name == "reid_nb" or name.startswith("reid_nb."):
            with open(os.path.join(_log, f"{os.getpid()}.txt"), "a", encoding="utf-8") as f:
                f.write(f"{os.environ.get('DVC_STAGE', '-')}\t{name}\n")
        return None


if _log: sys.meta_path.insert(0, _Recorder())
