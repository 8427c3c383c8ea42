"""VeRi-776 (vehicle re-identification, the Market-1501 ranking protocol) as a new layout: a tree in the release's exact
naming (`VeRi/image_train|image_query|image_test/VVVV_cCCC_FFFFFFFF_I.jpg`, 20 cameras), made here in a few bytes per
image, read through `load_dataset("veri776", …)`; its known-size check, its archive through the data stage, and its
errors. Also: loading is read-only (it never prepares), and `open_dataset` is the one way a run opens a dataset."""
import hashlib
import warnings
import zipfile
from pathlib import Path

import pytest

from conftest import run_cli
from reid_nb.data import DATASETS, LAYOUTS, load_dataset, read_dataset
from reid_nb.manifest import open_dataset
from reid_nb.sources import prepare_dataset

BYTES = b"\xff\xd8 a few bytes: parsing never decodes"

# train 3 vehicles / 5 images, query 2 / 2, gallery 2 vehicles / 4 images; cameras c001 … c020 as the release has them
VERI = {"image_train": ["0001_c001_00016450_0.jpg", "0001_c005_00016460_1.jpg", "0002_c020_00075400_0.jpg",
                        "0004_c003_00081020_0.jpg", "0004_c014_00081095_2.jpg"],
        "image_query": ["0006_c002_00030600_0.jpg", "0008_c019_00058800_1.jpg"],
        "image_test": ["0006_c004_00030615_0.jpg", "0006_c011_00030710_1.jpg", "0008_c007_00058900_0.jpg",
                       "0008_c020_00059010_0.jpg"]}


def write_veri(folder: Path, files: dict = VERI) -> Path:
    for sub, names in files.items():
        (folder / sub).mkdir(parents=True, exist_ok=True)
        for i, n in enumerate(names): (folder / sub / n).write_bytes(BYTES + f"{sub}{i}".encode())
    return folder


def quiet(fn, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                      # a 11-image VeRi is not the complete release
        return fn(*a, **kw)


def test_veri776_is_a_table_row_and_a_reader():
    info = DATASETS["veri776"]
    assert (info.folder, info.num_cams, info.sizes, info.ids, info.label) == ("VeRi", 20, (37778, 1678, 11579),
                                                                               (576, 200), "VeRi-776")
    assert LAYOUTS[info.layout] is info.reader and info.reader.inside == "image_train"


def test_veri776_parses_counts_and_cameras(tmp_path):
    folder = write_veri(tmp_path / "data" / "veri776")
    ds = quiet(load_dataset, "veri776", tmp_path / "data")
    assert ds.root == folder
    assert (len(ds.train), len(ds.query), len(ds.gallery), ds.num_train_pids) == (5, 2, 4, 3)
    assert [(r.pid, r.camid) for r in ds.train] == [(0, 0), (0, 4), (1, 19), (2, 2), (2, 13)]   # 1, 2, 4 relabelled
    assert [(r.pid, r.camid) for r in ds.query] == [(6, 1), (8, 18)]                         # test ids kept
    assert sorted({r.camid for r in ds.gallery}) == [3, 6, 10, 19]
    assert ds.num_cams == 20 and ds.dropped == {"train": 0, "query": 0, "gallery": 0}
    assert quiet(load_dataset, "veri776", folder).train == ds.train          # the dataset folder itself as root


def test_veri776_known_sizes_name_a_truncated_copy(tmp_path):
    write_veri(tmp_path / "veri776")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        load_dataset("veri776", tmp_path)
    msgs = [str(x.message) for x in w]
    assert any("5 / 2 / 4 train / query / gallery images, a complete veri776 has 37778 / 1678 / 11579" in m
               for m in msgs), msgs
    assert any("3 / 2 train / test identities, a complete veri776 has 576 / 200" in m for m in msgs), msgs


def test_veri776_bad_names_and_cameras_are_named(tmp_path):
    folder = write_veri(tmp_path / "veri776")
    bad = folder / "image_query" / "0006_c21_00030600_0.jpg"           # a 2-digit camera: not VeRi's naming
    bad.write_bytes(BYTES)
    with pytest.raises(ValueError, match=r"0006_c21_00030600_0.jpg: cannot parse .* like 0001_c001_00016450_0.jpg"):
        load_dataset("veri776", tmp_path)
    bad.unlink()
    (folder / "image_test" / "0006_c021_00030600_0.jpg").write_bytes(BYTES)
    with pytest.raises(ValueError, match="camera c21 is outside c1…c20"): load_dataset("veri776", tmp_path)


def test_veri776_missing_or_misplaced(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"veri776: not found at .*Place a copy of VeRi.zip .*run the data "
                                                r"stage first \(reid-nb prepare veri776"):
        load_dataset("veri776", tmp_path)
    write_veri(tmp_path / "VeRi")                                      # unpacked by hand under the release's name
    with pytest.raises(FileNotFoundError, match=f"rename it to {tmp_path / 'veri776'}"):
        load_dataset("veri776", tmp_path)
    broken = tmp_path / "other" / "veri776"; (broken / "image_train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no dataset in the VeRi-776 layout .*missing: .*image_query"):
        load_dataset("veri776", tmp_path / "other")
    with pytest.raises(FileNotFoundError, match=r"Place a copy of VeRi.zip in .* declare its MD5 .*image_train exists"):
        prepare_dataset("veri776", tmp_path / "empty")


def test_veri776_archive_through_the_data_stage(tmp_path):
    src = write_veri(tmp_path / "src" / "VeRi")
    arc = tmp_path / "VeRi.zip"
    with zipfile.ZipFile(arc, "w") as zf:
        for p in sorted(src.rglob("*")): zf.write(p, p.relative_to(src.parent))
    md5 = hashlib.md5(arc.read_bytes()).hexdigest()
    root = tmp_path / "data"
    folder = prepare_dataset("veri776", root, archive=arc, md5=md5, progress=False)
    assert folder == root / "veri776" and sorted(p.name for p in root.iterdir()) == ["veri776"]
    ds = quiet(load_dataset, "veri776", root)
    assert (len(ds.train), len(ds.query), len(ds.gallery)) == (5, 2, 4)
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf: zf.writestr("Other/readme.txt", "x")
    with pytest.raises(FileNotFoundError, match="the archive holds Other, not a folder VeRi/ with image_train/"):
        prepare_dataset("veri776", tmp_path / "d2", archive=bad, md5=hashlib.md5(bad.read_bytes()).hexdigest())


def test_loading_never_prepares_and_open_dataset_checks(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"synthetic: not found at .*run the data stage first \(reid-nb prepare "
                                                r"synthetic"):
        load_dataset("synthetic", tmp_path)
    assert list(tmp_path.iterdir()) == []                              # nothing generated
    folder = write_veri(tmp_path / "veri776")
    ds, fp = quiet(open_dataset, "veri776", tmp_path)
    assert ds.root == folder and len(fp) == 64
    assert quiet(open_dataset, "veri776", tmp_path, rank=1).fingerprint is None
    with pytest.raises(ValueError, match="lies inside the folder of dataset veri776"):
        quiet(open_dataset, "veri776", tmp_path, outputs=dict(out=folder / "run"))
    (folder / "image_train" / "0001_c001_00016450_0.jpg").write_bytes(b"changed")
    manifest = dict(dataset="veri776", fingerprint=fp, images={}, labels={})
    with pytest.raises(ValueError, match="image_train/0001_c001_00016450_0.jpg: not in the manifest"):
        quiet(open_dataset, "veri776", tmp_path, manifest)
    assert read_dataset("veri776", folder).train == ds.train


def test_train_on_an_unprepared_dataset_is_one_line_and_makes_nothing(tmp_path):
    "Training reads a prepared dataset only: no generating, downloading or extracting behind the data stage's back."
    root = tmp_path / "data"
    p = run_cli("train", "--variant", "baseline", "--dataset", "synthetic", "--data-root", root,
                "--out", tmp_path / "run", "--epochs", "1", "--no-progress", check=False, cwd=tmp_path)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, (p.returncode, p.stderr)
    assert "synthetic: not found at" in p.stderr and f"reid-nb prepare synthetic --root {root}" in p.stderr, p.stderr
    assert not root.exists() and not (tmp_path / "run").exists()
