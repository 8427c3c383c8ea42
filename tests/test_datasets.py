"""The datasets beyond Market-1501 / DukeMTMC-reID: MSMT17 (V1 and V2), CUHK03-NP (detected, labeled) and the user's own
(params.yaml `data.custom`). Each layout is written here as a small tree in the release's exact naming (a few bytes per image:
parsing never decodes), and the parsed counts, the known-size warnings, the archives (made here, with a declared MD5) and the
errors for bad input are checked. No network."""
import contextlib
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import warnings
import zipfile
from pathlib import Path

import pytest

from reid_nb import data as D
from reid_nb.data import DATASETS, load_dataset, read_dataset, register_custom_datasets
from reid_nb.download import ChecksumError
from reid_nb.sources import SOURCE_FILE, prepare_dataset

BYTES = b"\xff\xd8 a few bytes: parsing never decodes"


@pytest.fixture(autouse=True)
def registry():
    "Each test starts from (and leaves) the built-in registry: custom registrations do not leak between tests."
    saved = dict(DATASETS)
    yield
    DATASETS.clear(); DATASETS.update(saved)


def counts(ds) -> dict:
    "`{split: (ids, images, cameras)}` from the dataset's own statistics."
    return {r["split"]: (r["ids"], r["images"], r["cameras"]) for r in ds.stats(show=False)}


def quiet_load(name, root, **kw):
    "The data stage first when `kw` declares an archive (loading never extracts), then the read-only load."
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kw: prepare_dataset(name, root, progress=False, **kw)
        return load_dataset(name, root)


def load_warnings(name, root) -> list[str]:
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        load_dataset(name, root)
    return [str(x.message) for x in w]


# MSMT17 -----------------------------------------------------------------------------------------------------------------------
# Release names: MSMT17_V1/{train,test}/ or MSMT17_V2/{mask_train_v2,mask_test_v2}/, lists list_{train,val,query,gallery}.txt
# with lines "PPPP/PPPP_NNN_CC_DATEtime_FFFF_K.jpg PID"; CC (the third '_' field) is the camera, 01..15.
MSMT_DIRS = {"V1": ("train", "test"), "V2": ("mask_train_v2", "mask_test_v2")}


def msmt_name(pid, n, cam, slot="0303morning"):
    return f"{pid:04d}/{pid:04d}_{n:03d}_{cam:02d}_{slot}_{n * 7 + 3:04d}_{n % 3}.jpg"


MSMT_LISTS = {   # train 3 ids / 5 images (list_val adds one of them and a new one), query 2 / 2, gallery 3 / 4, cameras 1..15
    "list_train.txt": [(msmt_name(0, 0, 1), 0), (msmt_name(0, 1, 4, "0113noon"), 0), (msmt_name(1, 0, 15), 1)],
    "list_val.txt": [(msmt_name(1, 1, 2, "0302afternoon"), 1), (msmt_name(2, 0, 7), 2)],
    "list_query.txt": [(msmt_name(0, 0, 3), 0), (msmt_name(5, 0, 11), 5)],
    "list_gallery.txt": [(msmt_name(0, 1, 9), 0), (msmt_name(5, 1, 12, "0114noon"), 5), (msmt_name(5, 2, 1), 5),
                         (msmt_name(6, 0, 14), 6)],
}


def write_msmt17(folder: Path, version="V2", lists=MSMT_LISTS) -> Path:
    train, test = MSMT_DIRS[version]
    for lf, rows in lists.items():
        images = folder / (train if lf in ("list_train.txt", "list_val.txt") else test)
        for rel, _ in rows:
            (images / rel).parent.mkdir(parents=True, exist_ok=True); (images / rel).write_bytes(BYTES)
        (folder / lf).write_text("".join(f"{rel} {pid}\n" for rel, pid in rows))
    return folder


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_msmt17_both_releases_parse_with_the_protocol(tmp_path, version):
    folder = write_msmt17(tmp_path / "data" / "msmt17", version)
    ds = quiet_load("msmt17", tmp_path / "data")
    assert ds.root == folder
    assert counts(ds) == {"train": (3, 5, 5), "query": (2, 2, 2), "gallery": (3, 4, 4)}
    assert ds.num_train_pids == 3 and ds.num_cams == 15                       # c15 seen: 0-based camid 14
    assert [(r.pid, r.camid) for r in ds.train] == [(0, 0), (0, 3), (1, 14), (1, 1), (2, 6)]   # list_train, then list_val
    assert [(r.pid, r.camid) for r in ds.query] == [(0, 2), (5, 10)]          # test pids as listed (their own numbering)
    train_dir = MSMT_DIRS[version][0]
    assert ds.train[4].path == str(folder / train_dir / msmt_name(2, 0, 7))
    assert ds.dropped == {"train": 0, "query": 0, "gallery": 0}


def test_msmt17_partial_copy_warns_with_the_known_sizes(tmp_path):
    write_msmt17(tmp_path / "msmt17")
    msgs = load_warnings("msmt17", tmp_path)
    assert any("5 / 2 / 4 train / query / gallery images, a complete msmt17 has 32621 / 11659 / 82161" in m for m in msgs), msgs
    assert any("3 / 3 train / test identities, a complete msmt17 has 1041 / 3060" in m for m in msgs), msgs


def test_msmt17_bad_input_names_the_file(tmp_path):
    folder = write_msmt17(tmp_path / "msmt17")
    (folder / "list_gallery.txt").unlink()
    with pytest.raises(FileNotFoundError, match=f"missing: {folder / 'list_gallery.txt'}"): load_dataset("msmt17", tmp_path)
    write_msmt17(folder)
    for rel, _ in MSMT_LISTS["list_gallery.txt"][:2]: (folder / "mask_test_v2" / rel).unlink()
    with pytest.raises(FileNotFoundError, match=r"2 image\(s\) listed in its list files are missing") as e: load_dataset("msmt17", tmp_path)
    assert str(folder / "mask_test_v2" / MSMT_LISTS["list_gallery.txt"][0][0]) in str(e.value)
    write_msmt17(folder)
    (folder / "list_val.txt").write_text(f"{msmt_name(2, 0, 7)} 2\n{msmt_name(2, 1, 7)}\n")
    with pytest.raises(ValueError, match=r"list_val.txt:2: .* is not 'RELATIVE/PATH.jpg PID'"): load_dataset("msmt17", tmp_path)
    (folder / "list_val.txt").write_text("0002/0002_c7_0001.jpg 2\n")
    with pytest.raises(ValueError, match="list_val.txt:1: 0002/0002_c7_0001.jpg: cannot read the camera"): load_dataset("msmt17", tmp_path)
    (folder / "list_val.txt").write_text("")
    with pytest.raises(ValueError, match="list_val.txt: no images listed"): load_dataset("msmt17", tmp_path)
    shutil.rmtree(folder / "mask_train_v2")
    with pytest.raises(FileNotFoundError, match=r"\(MSMT17_V1\) or mask_train_v2/ \+ mask_test_v2/ \(MSMT17_V2\)"): load_dataset("msmt17", tmp_path)
    other = tmp_path / "other"; (other / "test").mkdir(parents=True)               # a data root with an unrelated test/ folder
    with pytest.raises(FileNotFoundError, match=r"msmt17: not found at .*other/msmt17\. Place a copy of MSMT17_V1.tar.gz or MSMT17_V2.tar.gz"):
        load_dataset("msmt17", other)


# CUHK03-NP --------------------------------------------------------------------------------------------------------------------
# Release: cuhk03-np/{detected,labeled}/{bounding_box_train,query,bounding_box_test}/PPPP_cC_N.png, cameras c1 and c2.
CUHK = {"bounding_box_train": ["0001_c1_1.png", "0001_c2_6.png", "0003_c1_2.png", "0003_c2_7.png", "0005_c1_3.png", "0005_c1_4.png"],
        "query": ["0002_c1_1.png", "0002_c2_6.png", "0004_c2_7.png"],
        "bounding_box_test": ["0002_c1_2.png", "0002_c2_8.png", "0004_c1_3.png", "0006_c2_9.png", "0007_c1_1.png"]}


def write_tree(folder: Path, files: dict) -> Path:
    for sub, names in files.items():
        (folder / sub).mkdir(parents=True, exist_ok=True)
        for n in names: (folder / sub / n).write_bytes(BYTES)
    return folder


@pytest.mark.parametrize("name,sizes", [("cuhk03_np_detected", "7365 / 1400 / 5332"), ("cuhk03_np_labeled", "7368 / 1400 / 5328")])
def test_cuhk03_np_parses_two_cameras_and_warns_on_a_partial_copy(tmp_path, name, sizes):
    write_tree(tmp_path / name, CUHK)
    msgs = load_warnings(name, tmp_path)
    assert any(f"a complete {name} has {sizes}" in m for m in msgs) and any("has 767 / 700" in m for m in msgs), msgs
    ds = quiet_load(name, tmp_path)
    assert counts(ds) == {"train": (3, 6, 2), "query": (2, 3, 2), "gallery": (4, 5, 2)} and ds.num_cams == 2
    (tmp_path / name / "query" / "0002_c3_1.png").write_bytes(BYTES)
    with pytest.raises(ValueError, match="camera c3 is outside c1…c2"): load_dataset(name, tmp_path)


# archives: made here, declared MD5, through prepare_dataset -------------------------------------------------------------------
def md5(p: Path) -> str: return hashlib.md5(p.read_bytes()).hexdigest()


def test_msmt17_archive_needs_a_declared_md5_and_a_wrong_one_keeps_the_file(tmp_path):
    src = write_msmt17(tmp_path / "src" / "MSMT17_V1", "V1")
    arc = tmp_path / "data" / "raw" / "MSMT17_V1.tar.gz"; arc.parent.mkdir(parents=True)
    with tarfile.open(arc, "w:gz") as tf: tf.add(src, "MSMT17_V1")
    root = tmp_path / "data"
    with pytest.raises(ValueError, match=r"no MD5 is published for msmt17: declare the MD5 of your copy .* data.archives.msmt17"):
        prepare_dataset("msmt17", root)
    with pytest.raises(ChecksumError, match="the file is kept as it is"):
        prepare_dataset("msmt17", root, archive=arc, md5="0" * 32)
    assert sorted(p.name for p in root.rglob("*")) == ["MSMT17_V1.tar.gz", "raw"]          # kept, nothing extracted
    ds = quiet_load("msmt17", root, archive=arc, md5=md5(arc))
    assert ds.root == root / "msmt17" and counts(ds)["gallery"] == (3, 4, 4)
    assert json.loads((root / "msmt17" / SOURCE_FILE).read_text()) == {"archive": "MSMT17_V1.tar.gz", "md5": md5(arc)}
    assert sorted(p.name for p in root.iterdir()) == ["msmt17", "raw"]                     # no staging folder left
    with pytest.raises(ValueError, match="was extracted from an archive with md5"):
        prepare_dataset("msmt17", root, archive=arc, md5="f" * 32)


def test_cuhk03_np_zip_gives_each_name_its_own_subfolder(tmp_path):
    arc = tmp_path / "cuhk03-np.zip"
    with zipfile.ZipFile(arc, "w") as zf:
        for version in ("detected", "labeled"):
            for sub, names in CUHK.items():
                for n in names[:-1] if version == "labeled" else names: zf.writestr(f"cuhk03-np/{version}/{sub}/{n}", BYTES)
    root = tmp_path / "data"
    det = quiet_load("cuhk03_np_detected", root, archive=arc, md5=md5(arc))
    lab = quiet_load("cuhk03_np_labeled", root, archive=arc, md5=md5(arc))
    assert (det.root, lab.root) == (root / "cuhk03_np_detected", root / "cuhk03_np_labeled")
    assert (len(det.gallery), len(lab.gallery)) == (5, 4)
    assert sorted(p.name for p in root.iterdir()) == ["cuhk03_np_detected", "cuhk03_np_labeled"]
    with pytest.raises(FileNotFoundError, match=r"Place a copy of cuhk03-np.zip in .* and declare its MD5"):
        prepare_dataset("cuhk03_np_labeled", tmp_path / "empty")


# custom datasets --------------------------------------------------------------------------------------------------------------
LAB = [("img/alice_1.jpg", "alice", "door", "train"), ("img/alice_2.jpg", "alice", "hall", "train"),
       ("img/bob_1.jpg", "bob", "door", "train"), ("img/carol_1.jpg", "carol", "hall", "query"),
       ("img/carol_2.jpg", "carol", "yard", "gallery"), ("img/dave_1.jpg", "dave", "door", "gallery"),
       ("img/erin_1.jpg", "erin", "door", "query"), ("img/erin_2.jpg", "erin", "hall", "gallery")]


def write_list(folder: Path, rows, name="lab.csv", header="path,pid,camid,split") -> Path:
    lf = folder / name; lf.parent.mkdir(parents=True, exist_ok=True)
    for path, *_ in rows: (lf.parent / path).parent.mkdir(parents=True, exist_ok=True); (lf.parent / path).write_bytes(BYTES)
    if lf.suffix == ".csv": lf.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    else: lf.write_text(json.dumps([dict(zip(("path", "pid", "camid", "split"), r)) for r in rows]))
    return folder


def test_custom_market_layout_with_many_cameras(tmp_path):
    register_custom_datasets({"shop": {}, "shop6": {"num_cams": 16}})
    files = {"bounding_box_train": ["0002_c1_000451.jpg", "0002_c12_000301.jpg", "0007_c3_077419.jpg", "-1_c2_000001.jpg"],
             "query": ["0001_c11_001051.jpg", "0003_c4_015641.jpg"],
             "bounding_box_test": ["0001_c2_000301.jpg", "0003_c12_000101.jpg", "0000_c1_000151.jpg", "-1_c1_000401.jpg"]}
    write_tree(tmp_path / "shop", files); write_tree(tmp_path / "shop6", files)
    ds = load_dataset("shop", tmp_path)
    assert counts(ds) == {"train": (2, 3, 3), "query": (2, 2, 2), "gallery": (3, 3, 3)}
    assert (ds.num_train_pids, ds.num_cams, ds.dropped) == (2, 12, {"train": 1, "query": 0, "gallery": 1})
    assert load_dataset("shop6", tmp_path).num_cams == 16                       # declared
    (tmp_path / "shop" / "query" / "0009_c1_000001.jpg").write_bytes(BYTES)
    with pytest.raises(ValueError, match=r"1 query identity not in the gallery \(9\)"): load_dataset("shop", tmp_path)


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_custom_list_maps_names_consistently_across_splits(tmp_path, fmt):
    register_custom_datasets({"lab": {"list": f"meta/lab.{fmt}"}})
    write_list(tmp_path / "lab", LAB, f"meta/lab.{fmt}")
    ds = load_dataset("lab", tmp_path)
    assert counts(ds) == {"train": (2, 3, 2), "query": (2, 2, 2), "gallery": (3, 3, 3)} and ds.num_cams == 3
    assert ds.train[0] == D.Record(str(tmp_path / "lab" / "meta" / "img" / "alice_1.jpg"), 0, 0)
    pid_of = {Path(r.path).stem.split("_")[0]: r.pid for r in ds.query + ds.gallery}
    assert pid_of == {"carol": 2, "dave": 3, "erin": 4}                       # names numbered in sorted order, over all splits
    assert [r.camid for r in ds.gallery] == [2, 0, 1]                         # door 0, hall 1, yard 2
    nums = [(p, {"alice": 3, "bob": 8, "carol": 21, "dave": 4, "erin": 30}[n], c, s) for p, n, c, s in LAB]
    write_list(tmp_path / "lab", nums, f"meta/lab.{fmt}")
    ds = load_dataset("lab", tmp_path)                                        # numbers: kept as written (train relabelled)
    assert [r.pid for r in ds.train] == [0, 0, 1] and [r.pid for r in ds.query] == [21, 30]


def test_custom_list_overlap_is_a_warning(tmp_path):
    register_custom_datasets({"lab": {"list": "lab.csv"}})
    write_list(tmp_path / "lab", LAB + [("img/alice_3.jpg", "alice", "yard", "gallery")])
    msgs = load_warnings("lab", tmp_path)
    assert msgs == [f"{tmp_path / 'lab' / 'lab.csv'}: 1 identity is in both the training and the test splits (alice); "
                    "the usual protocol keeps them apart"]


BAD_LISTS = [   # (rows, header, the error's words)
    (LAB, "path,person,camid,split", "the header is path,person,camid,split; expected path,pid,camid,split"),
    (LAB[:7] + [("img/erin_2.jpg", "erin", "hall", "test")], None, "lab.csv:9: split 'test' is not one of train, query, gallery"),
    ([r for r in LAB if r[3] != "query"], None, "no images in split(s) query"),
    (LAB[:7], None, "1 query identity not in the gallery (erin)"),
    (LAB[:7] + [("/abs/erin_2.jpg", "erin", "hall", "gallery")], None, "path '/abs/erin_2.jpg': expected a path relative to"),
    (LAB[:7] + [("img/erin_2.jpg", "", "hall", "gallery")], None, "pid '': expected a whole number or a name"),
]


@pytest.mark.parametrize("rows,header,words", BAD_LISTS, ids=["header", "split", "empty", "query", "absolute", "pid"])
def test_custom_list_bad_input(tmp_path, rows, header, words):
    register_custom_datasets({"lab": {"list": "lab.csv"}})
    folder = tmp_path / "lab"
    if rows[-1][0].startswith("/"):
        write_list(folder, rows[:-1]); (folder / "lab.csv").write_text((folder / "lab.csv").read_text() + ",".join(rows[-1]) + "\n")
    else: write_list(folder, rows, header=header or "path,pid,camid,split")
    with pytest.raises(ValueError) as e: load_dataset("lab", tmp_path)
    assert words in str(e.value), str(e.value)


def test_custom_list_missing_files_are_named_and_counted(tmp_path):
    register_custom_datasets({"lab": {"list": "lab.csv"}})
    folder = write_list(tmp_path / "lab", LAB)
    with pytest.raises(FileNotFoundError, match=f"no list file at {tmp_path / 'lab' / 'other.csv'}"):
        register_custom_datasets({"lab": {"list": "other.csv"}}); load_dataset("lab", tmp_path)
    register_custom_datasets({"lab": {"list": "lab.csv"}})
    for n in ("bob_1", "carol_1", "dave_1", "erin_1", "erin_2"): (folder / "img" / f"{n}.jpg").unlink()
    with pytest.raises(FileNotFoundError) as e: load_dataset("lab", tmp_path)
    assert f"lab: 5 image(s) listed in lab.csv are missing under {folder}: {folder / 'img' / 'bob_1.jpg'}, " in str(e.value)
    assert str(e.value).endswith("… (2 more)")


def test_custom_registration_is_checked():
    for spec, words in [({"market1501": {}}, "'market1501' is a built-in dataset"), ({"msmt17": {"list": "a.csv"}}, "built-in"),
                        ({"x": {"lst": "a.csv"}}, "unknown key(s) 'lst'; known: list, num_cams"),
                        ({"x": {"list": "a.txt"}}, "expected a .csv or .json file name"),
                        ({"x": {"num_cams": "six"}}, "x.num_cams: expected a whole number ≥ 1"),
                        ({"../x": {}}, "a dataset name is letters, digits"), (["x"], "expected a mapping of dataset names")]:
        with pytest.raises(ValueError) as e: register_custom_datasets(spec)
        assert words in str(e.value), (spec, str(e.value))
    with pytest.raises(KeyError, match=r"known: market1501, dukemtmc, msmt17, cuhk03_np_detected, cuhk03_np_labeled, veri776, "
                                       r"synthetic "
                                       r"\(your own datasets are registered by name in params.yaml under data.custom\)"):
        D.dataset_info("lab")


# the command line: params.yaml data.custom makes the name known to prepare / train / evaluate --------------------------------
def cli(*args):
    from reid_nb.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())


def test_params_custom_registers_the_name_for_the_cli(tmp_path):
    from reid_nb.cli import read_params, load_params
    from PIL import Image
    folder = write_list(tmp_path / "data" / "lab", LAB)
    for i, (p, *_) in enumerate(LAB): Image.new("RGB", (16, 32), (40 + 20 * i, 80, 120)).save(folder / p, "JPEG")   # distinct images
    params = tmp_path / "params.yaml"
    params.write_text(f"datasets: [synthetic, lab]\ndata:\n  root: {tmp_path / 'data'}\n  custom:\n    lab: {{list: lab.csv}}\n")
    assert read_params(params)["datasets"] == ["synthetic", "lab"] and D.dataset_info("lab").list_file == "lab.csv"
    assert load_params(params)["data_root"] == str(tmp_path / "data")
    p = cli("prepare", "lab", "--params", params, "--manifest", tmp_path / "lab.json")
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "lab.json").read_text())["sizes"] == {"train": 3, "query": 2, "gallery": 3}
    DATASETS.pop("lab")
    p = cli("prepare", "lab", "--root", tmp_path / "data")                    # no params: the name is unknown, and says why
    assert p.returncode != 0 and "unknown dataset 'lab'" in p.stderr and "registered by name in params.yaml under data.custom" in p.stderr
    params.write_text("datasets: [lab]\n")
    with pytest.raises(ValueError, match=r"unknown dataset\(s\) under datasets in .*'lab'; known: market1501.*registered by name under data.custom"):
        read_params(params)
    params.write_text("data:\n  custom:\n    dukemtmc: {}\n")
    p = cli("prepare", "dukemtmc", "--params", params)
    assert p.returncode != 0 and "data.custom.dukemtmc: 'dukemtmc' is a built-in dataset" in p.stderr
