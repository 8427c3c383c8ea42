"""A trained run on images that are not the pipeline's splits, through the command line: `reid-nb extract` writes one feature per
readable image and names the unreadable one; `reid-nb search` ranks a gallery (a folder or a feature file) for query images and
writes the JSON and the figure; a gallery image used as its own query comes first."""
import json
import shutil

import numpy as np
import pytest

from conftest import TINY, run_cli


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("infer") / "run"
    run_cli("train", *TINY, "--data-root", data_root, "--out", run, "--epochs", "1", "--max-batches", "2")
    return run


def test_extract_a_folder_with_an_unreadable_image(trained, data_root, tmp_path):
    from reid_nb.evaluate import load_model
    folder = tmp_path / "mine"
    (folder / "cam2").mkdir(parents=True)
    gallery = sorted((data_root / "synthetic" / "bounding_box_test").glob("*.png"))[:19]
    for i, p in enumerate(gallery): shutil.copy(p, folder / ("cam2" if i % 2 else ".") / p.name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    p = run_cli("extract", "--run", trained, "--images", folder, "--out", tmp_path / "f.npz", "--no-progress", "--camid-from-name")
    assert "broken.jpg" in p.stderr and "skipped 1 unreadable image" in p.stdout, (p.stdout, p.stderr)
    z = np.load(tmp_path / "f.npz", allow_pickle=False)
    model, _ = load_model(trained)
    assert z["features"].shape == (19, model.feature_dim) and z["features"].dtype == np.float32
    assert sorted(map(str, z["paths"])) == sorted(str(q) for q in folder.rglob("*.png"))
    assert np.allclose(np.linalg.norm(z["features"], axis=1), 1, atol=1e-5) and len(z["camids"]) == 19
    # the evaluation's own features of the same images, normalised, are the same numbers
    from reid_nb.evaluate import extract_features
    from reid_nb.data import Record
    import torch
    ref = extract_features(model, [Record(str(q), -1, -1) for q in z["paths"]], tuple(model.config["input_size"]), flip=True,
                           num_workers=0, progress=False)
    assert np.allclose(z["features"], torch.nn.functional.normalize(ref, dim=1).numpy(), atol=1e-5)


def test_search_finds_a_gallery_image_first(trained, data_root, tmp_path):
    gallery = data_root / "synthetic" / "bounding_box_test"
    run_cli("extract", "--run", trained, "--images", gallery, "--out", tmp_path / "g.npz", "--no-progress")
    queries = sorted(gallery.glob("*.png"))[5:7]
    for g in (tmp_path / "g.npz", gallery):                     # a feature file, or the folder itself
        out = tmp_path / ("s_npz" if str(g).endswith(".npz") else "s_dir")
        run_cli("search", "--run", trained, "--query", *queries, "--gallery", g, "--topk", "5", "--out", out, "--no-progress")
        res = json.loads((out / "search.json").read_text())
        assert [r["query"] for r in res] == [str(q) for q in queries]
        for r, q in zip(res, queries):
            assert len(r["top"]) == 5 and r["top"][0]["path"] == str(q) and abs(r["top"][0]["distance"]) < 1e-5, r["top"][:2]
            assert [t["distance"] for t in r["top"]] == sorted(t["distance"] for t in r["top"])
        assert (out / "search.png").stat().st_size > 10_000


def test_mistakes_are_one_line(trained, tmp_path):
    for args, needle in ((["extract", "--run", trained, "--images", tmp_path / "none", "--out", tmp_path / "x.npz"], "no such folder"),
                         (["extract", "--run", tmp_path, "--images", tmp_path, "--out", tmp_path / "x.npz"], "config.json: missing"),
                         (["search", "--run", trained, "--query", tmp_path / "q.png", "--gallery", tmp_path / "g.npz", "--out", tmp_path],
                          "cannot read query image")):
        p = run_cli(*args, check=False)
        assert p.returncode == 2 and "Traceback" not in p.stderr and needle in p.stderr, (args, p.stderr)
