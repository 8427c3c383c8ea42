"""`reid-nb export` (reid_nb.export, nbs/36_export.ipynb): a trained run written as ONNX through the command line and run by
onnxruntime at two batch sizes; every variant exported at the teaching size and checked against PyTorch; an operator the exporter
cannot translate named in the error; a missing run and an unknown format refused in one line; and the ONNX packages kept out of
every other command."""
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, TINY, run_cli

TINY_MODEL = dict(input_size=(64, 32), width=0.25)


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("export") / "run"
    run_cli("train", *TINY, "--width", "0.25", "--data-root", data_root, "--out", run, "--epochs", "1", "--max-batches", "2")
    return run


def test_cli_exports_a_trained_run(trained, tmp_path):
    import onnx
    import onnxruntime as ort
    from reid_nb.evaluate import load_model
    from reid_nb.export import OPSET, TOLERANCE
    out = tmp_path / "model.onnx"
    p = run_cli("export", "--run", trained, "--format", "onnx", "--out", out)
    assert f"opset {OPSET}" in p.stdout and "N dynamic" in p.stdout, p.stdout
    printed = re.search(r"max \|feature difference\| (\S+) ", p.stdout)
    assert printed and float(printed[1]) < TOLERANCE, p.stdout
    onnx.checker.check_model(onnx.load(str(out)))
    assert [q.name for q in tmp_path.iterdir()] == ["model.onnx"]           # one self-contained file, no temporary left
    model, meta = load_model(trained)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert inp.shape == ["batch", 3, 64, 32] and outp.shape == ["batch", model.feature_dim], (inp.shape, outp.shape)
    assert session.get_modelmeta().custom_metadata_map["reid_nb.variant"] == meta["variant"] == "baseline"
    gen = torch.Generator().manual_seed(1)
    for n in (3, 1):                                                         # the batch axis is dynamic
        x = torch.randn(n, 3, 64, 32, generator=gen)
        got = session.run(None, {inp.name: x.numpy()})[0]
        with torch.inference_mode(): want = model(x).numpy()
        assert got.shape == (n, model.feature_dim) and np.abs(got - want).max() < TOLERANCE


@pytest.mark.parametrize("variant", ["sam", "sam_ff", "full", "rga_s", "rga_c", "rga_sc"])
def test_every_other_variant_exports_and_matches(variant, tmp_path):
    "Random weights at the teaching size; `baseline` is the trained run above, exported through the command line."
    from reid_nb.models import build_model
    from reid_nb.export import check_onnx, export_onnx, TOLERANCE
    torch.manual_seed(0)
    model = build_model(variant, 5, **TINY_MODEL).eval()
    path = export_onnx(model, tmp_path / f"{variant}.onnx")
    diff = check_onnx(model, path, batch_sizes=(3, 1))
    print(f"{variant}: max |torch - onnxruntime| = {diff:.2e}")
    assert diff < TOLERANCE, (variant, diff)


class MedianPool(torch.nn.Module):
    "Global median pooling: `aten.median.dim`, an operator the ONNX exporter has no translation for."
    def forward(self, x): return x.flatten(2).median(dim=2).values


def test_an_operator_without_onnx_translation_is_named(tmp_path, monkeypatch):
    "A real exporter failure (no stand-in exception): a baseline whose head pools with the median, exported as a run."
    import reid_nb.export as ex
    from reid_nb.models import build_model
    model = build_model("baseline", 5, **TINY_MODEL).eval()
    model.head.pool = MedianPool()
    monkeypatch.setattr(ex, "load_model", lambda run, device: (model, dict(variant="baseline", model_config=model.config)))
    with pytest.raises(ex.ExportError) as e:
        ex.export_run(tmp_path / "run-median", tmp_path / "m.onnx")
    msg = str(e.value)
    assert msg.startswith(f"variant 'baseline' of run {tmp_path / 'run-median'}: cannot be exported to ONNX (opset {ex.OPSET}): "
                          "operator aten.median.dim: "), msg
    assert "no ONNX function for it" in msg and "\n" not in msg, msg
    assert e.value.op == "aten.median.dim" and e.value.__cause__ is not None
    assert not (tmp_path / "m.onnx").exists()


def test_mistakes_are_one_line(trained, tmp_path):
    from reid_nb.export import export_run
    for args, needle in ((["--run", tmp_path / "nowhere", "--out", tmp_path / "x.onnx"], "config.json: missing"),
                         (["--run", trained, "--format", "tflite", "--out", tmp_path / "x.onnx"], "unknown export format 'tflite'; known: onnx")):
        p = run_cli("export", *args, check=False)
        assert p.returncode == 2 and "Traceback" not in p.stderr and needle in p.stderr, (args, p.stderr)
    with pytest.raises(ValueError, match=r"x\.pt: an ONNX model is written as \.onnx"): export_run(trained, tmp_path / "x.pt")
    assert not list(tmp_path.iterdir())


def test_help_states_the_opset_and_other_commands_stay_without_onnx():
    from reid_nb.cli import build_parser
    from reid_nb.export import OPSET
    sub = next(a for a in build_parser("export")._actions if a.dest == "command").choices["export"]
    assert f"opset {OPSET}" in " ".join(sub.format_help().split())
    code = ("import sys, reid_nb.cli as c; c.build_parser('train'); import reid_nb.evaluate; "
            "bad = [m for m in ('reid_nb.export', 'onnx', 'onnxscript', 'onnxruntime') if m in sys.modules]; "
            "import reid_nb.export; bad += [m for m in ('onnx', 'onnxscript', 'onnxruntime') if m in sys.modules]; print(bad)")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert p.stdout.strip() == "[]", p.stdout + p.stderr
