"""Hostile inputs (issue 28): special files named like images, lists that inflate the metrics, feature files that
lie, outputs left half written, manifests and configs that do not match, and a synthetic set made by an older
renderer. Every case is refused with one line that names the thing (or, for an outdated set, fixed with one line
saying so). A command that could hang runs under a timeout: a hang counts as a failure."""
import contextlib, io, json, os, shutil, subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, run_cli

FEATURE_DIM = {}            # the run fixture's feature size
HANG = 45                   # seconds: a command waiting on a FIFO never ends; fixed, these cases fail in seconds


def cli(*args, cwd, timeout=None):
    """`reid-nb ARGS` run in `cwd`: as a subprocess under `timeout` where the command could hang (a hang fails the
    test), else in this process (`cli.main`, the same one-line errors, without an interpreter's start-up per case)."""
    if timeout:
        try: return run_cli(*args, cwd=cwd, check=False, timeout=timeout)
        except subprocess.TimeoutExpired: pytest.fail(f"reid-nb {args[0]} hung (still running after {timeout} s)")
    from reid_nb.cli import main
    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): rc = main([str(a) for a in args])
    except SystemExit as e: rc = e.code            # argparse refuses an option out of its range before main's handler
    finally: os.chdir(here)
    return subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())


def refused(p, *names) -> str:
    "Assert a non-zero exit whose last line of stderr (the one-line error, no traceback) names every one of `names`."
    assert p.returncode != 0, f"exited 0\n{p.stdout}\n{p.stderr}"
    assert "Traceback" not in p.stderr, p.stderr
    last = [l for l in p.stderr.splitlines() if l.strip()][-1]
    for n in names: assert str(n) in last, f"{n!r} not in the error line: {last}"
    return last


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    "A data root with a tiny synthetic set (33 images: 4 train identities, 3 test identities)."
    from reid_nb.synthetic import make_synthetic
    root = tmp_path_factory.mktemp("tiny")
    make_synthetic(root / "synthetic", seed=0, num_train_ids=4, num_test_ids=3, train_images_per_id=3,
                   gallery_images_per_id=4, num_distractors=2, num_junk=1)
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    "An untrained baseline run folder as `reid-nb train` writes it (config.json with its training record, weights)."
    from safetensors.torch import save_file
    from reid_nb.models import build_model
    out = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    m = build_model("baseline", 4, input_size=(64, 32), width=0.25).eval()
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(out / "model.safetensors"))
    tc = dict(variant="baseline", dataset="synthetic", input_size=[64, 32], width=0.25, epochs=1, seed=0)
    cfg = dict(variant="baseline", num_classes=4, model_config=m.config, train_config=tc, dataset="synthetic")
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    FEATURE_DIM["run"] = m.feature_dim
    return out


def data_copy(tiny, tmp_path) -> Path:
    "A copy of the tiny data root that a test may damage."
    shutil.copytree(tiny, tmp_path / "data")
    return tmp_path / "data"


def images(tiny, n=3) -> list[Path]:
    return sorted((tiny / "synthetic" / "bounding_box_test").glob("0*.png"))[:n]


def custom(tiny, tmp_path, edit=None) -> Path:
    """A params file registering `mine`, a list-layout dataset made of copies of the tiny set's images
    (`edit(rows, folder)` may change its rows first); returns the params file (the data root is `tmp_path/data`)."""
    from reid_nb.data import load_dataset
    ds = load_dataset("synthetic", tiny)
    folder = tmp_path / "data" / "mine"; (folder / "img").mkdir(parents=True)
    rows = []
    for split in ("train", "query", "gallery"):
        for r in getattr(ds, split):
            name = f"{split}_{Path(r.path).name}"
            shutil.copy(r.path, folder / "img" / name)
            pid = r.pid + 1000 if split == "train" else r.pid       # train identities apart from the test ones
            rows.append([f"img/{name}", str(pid), str(r.camid), split])
    if edit: edit(rows, folder)
    (folder / "list.csv").write_text("path,pid,camid,split\n" + "".join(",".join(r) + "\n" for r in rows))
    params = tmp_path / "p.yaml"
    params.write_text(f"data:\n  root: {tmp_path / 'data'}\n  custom:\n    mine: {{list: list.csv}}\n")
    return params


# --- special files named like images --------------------------------------------------------------------------------

def test_fifo_as_search_query_is_refused_not_waited_on(run, tiny, tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    p = cli("search", "--run", run, "--query", tmp_path / "pipe.jpg", "--gallery", tiny / "synthetic" / "query",
            "--out", tmp_path / "s", "--no-progress", cwd=tmp_path, timeout=HANG)
    refused(p, "pipe.jpg", "FIFO")


def test_fifo_in_a_dataset_split_is_refused_by_prepare(tiny, tmp_path):
    root = data_copy(tiny, tmp_path)
    os.mkfifo(root / "synthetic" / "query" / "0005_c1s1_000001_01.jpg")
    p = cli("prepare", "synthetic", "--root", root, cwd=tmp_path, timeout=HANG)
    refused(p, "0005_c1s1_000001_01.jpg", "FIFO")


def test_fifo_in_an_extract_folder_is_refused(run, tiny, tmp_path):
    folder = tmp_path / "imgs"; folder.mkdir()
    for f in images(tiny): shutil.copy(f, folder)
    os.mkfifo(folder / "pipe.jpg")
    p = cli("extract", "--run", run, "--images", folder, "--out", tmp_path / "f.npz", "--no-progress",
            cwd=tmp_path, timeout=HANG)
    refused(p, "pipe.jpg", "FIFO")
    assert not (tmp_path / "f.npz").exists()


def test_link_to_dev_zero_named_as_an_image_is_refused(run, tiny, tmp_path):
    folder = tmp_path / "imgs"; folder.mkdir()
    for f in images(tiny): shutil.copy(f, folder)
    (folder / "zero.jpg").symlink_to("/dev/zero")
    p = cli("extract", "--run", run, "--images", folder, "--out", tmp_path / "f.npz", "--no-progress",
            cwd=tmp_path, timeout=HANG)
    refused(p, "zero.jpg", "character device", "/dev/zero")


def test_a_huge_file_named_jpg_in_a_dataset_is_refused_by_its_size(tiny, tmp_path):
    root = data_copy(tiny, tmp_path)
    huge = root / "synthetic" / "bounding_box_train" / "0002_c1s1_999999_01.jpg"
    Image.new("RGB", (64, 128), (9, 99, 199)).save(huge, "JPEG")
    with open(huge, "r+b") as f: f.truncate(300_000_000)          # a valid JPEG padded (sparse) to 300 MB: decodes fine
    p = cli("prepare", "synthetic", "--root", root, cwd=tmp_path)
    refused(p, huge.name, "300,000,000 bytes, more than the")


def test_a_folder_named_npz_as_gallery_is_named_as_a_folder(run, tiny, tmp_path):
    (tmp_path / "gallery.npz").mkdir()
    p = cli("search", "--run", run, "--query", images(tiny)[0], "--gallery", tmp_path / "gallery.npz",
            "--out", tmp_path / "s", "--no-progress", cwd=tmp_path)
    refused(p, "gallery.npz", "is a folder, not a regular file")


# --- lists that inflate the metrics ---------------------------------------------------------------------------------

def test_custom_list_with_a_query_image_copied_into_the_gallery_is_refused(tiny, tmp_path):
    def dup(rows, folder):              # a query image, copied under another name into the gallery (another camera)
        q = next(r for r in rows if r[3] == "query")
        shutil.copy(folder / q[0], folder / "img" / "copy_of_query.png")
        rows.append(["img/copy_of_query.png", q[1], str((int(q[2]) + 1) % 3), "gallery"])
    params = custom(tiny, tmp_path, dup)
    p = cli("prepare", "mine", "--params", params, cwd=tmp_path)
    refused(p, "1 query image(s) have the same bytes as a gallery image", "copy_of_query.png")


def test_custom_list_with_a_duplicated_row_is_refused(tiny, tmp_path):
    params = custom(tiny, tmp_path, lambda rows, folder: rows.append(list(rows[-1])))
    p = cli("prepare", "mine", "--params", params, cwd=tmp_path)
    refused(p, "listed more than once", "list each image once")


def test_custom_list_with_pid_one_point_five_is_refused(tiny, tmp_path):
    def half(rows, folder): rows[0][1] = "1.5"
    p = cli("prepare", "mine", "--params", custom(tiny, tmp_path, half), cwd=tmp_path)
    refused(p, "list.csv:2", "pid '1.5': expected a whole number")


def test_custom_list_writing_a_camera_as_c1_and_as_a_number_is_refused(tiny, tmp_path):
    def mixed(rows, folder): rows[0][2] = "c1"
    p = cli("prepare", "mine", "--params", custom(tiny, tmp_path, mixed), cwd=tmp_path)
    refused(p, "list.csv", "the camid column mixes numbers", "'c1'")


# --- feature files --------------------------------------------------------------------------------------------------

def _search_npz(run, tiny, tmp_path, npz):
    return cli("search", "--run", run, "--query", images(tiny)[0], "--gallery", npz, "--out", tmp_path / "s",
               "--no-progress", cwd=tmp_path)


def test_a_text_file_named_npz_gets_one_clear_line(run, tiny, tmp_path):
    (tmp_path / "g.npz").write_text("path,feature\nx.jpg,0.1\n")
    last = refused(_search_npz(run, tiny, tmp_path, tmp_path / "g.npz"), "g.npz", "not a .npz feature file")
    assert "allow_pickle" not in last and "unsafe" not in last


def test_features_with_nan_are_refused(run, tiny, tmp_path):
    paths = images(tiny, 3)
    f = np.random.default_rng(0).normal(size=(3, FEATURE_DIM["run"])).astype(np.float32); f[1] = np.nan
    np.savez(tmp_path / "g.npz", features=f, paths=np.array([str(p) for p in paths]))
    p = _search_npz(run, tiny, tmp_path, tmp_path / "g.npz")
    refused(p, "g.npz", "1 of 3 feature rows are not finite", paths[1].name)
    assert not (tmp_path / "s" / "search.json").exists()


def test_features_with_fewer_rows_than_paths_are_refused(run, tiny, tmp_path):
    paths = sorted((tiny / "synthetic").rglob("0*.png"))[:20]
    f = np.random.default_rng(0).normal(size=(2, FEATURE_DIM["run"])).astype(np.float32)
    np.savez(tmp_path / "g.npz", features=f, paths=np.array([str(p) for p in paths]))
    refused(_search_npz(run, tiny, tmp_path, tmp_path / "g.npz"), "g.npz", "2 feature rows but 20 paths")


@pytest.mark.parametrize("bs", ["0", "-3"])
def test_extract_refuses_a_batch_size_below_one(run, tiny, tmp_path, bs):
    p = cli("extract", "--run", run, "--images", tiny / "synthetic" / "query", "--out", tmp_path / "f.npz",
            "--batch-size", bs, "--no-progress", cwd=tmp_path)
    last = refused(p)
    assert "batch" in last.lower() and bs in last, last
    assert not (tmp_path / "f.npz").exists()


def test_extract_refuses_the_features_of_non_finite_weights(run, tiny, tmp_path):
    from safetensors.torch import load_file, save_file
    bad = tmp_path / "run"; shutil.copytree(run, bad)
    sd = load_file(str(bad / "model.safetensors"))
    sd = {k: v.fill_(float("nan")) if v.is_floating_point() else v for k, v in sd.items()}
    save_file(sd, str(bad / "model.safetensors"))
    p = cli("extract", "--run", bad, "--images", tiny / "synthetic" / "query", "--out", tmp_path / "f.npz",
            "--no-progress", cwd=tmp_path)
    refused(p, "non-finite features")
    assert not (tmp_path / "f.npz").exists()


def test_search_that_fails_in_its_figure_leaves_no_half_output(run, tiny, tmp_path):
    gal = tmp_path / "gal"; gal.mkdir()
    for f in images(tiny, 3): shutil.copy(f, gal)
    cli("extract", "--run", run, "--images", gal, "--out", tmp_path / "g.npz", "--no-progress", cwd=tmp_path)
    assert (tmp_path / "g.npz").is_file()
    shutil.rmtree(gal)                                     # the gallery images are gone: the figure cannot be drawn
    p = cli("search", "--run", run, "--query", sorted((tiny / "synthetic" / "query").glob("*.png"))[0], "--gallery",
            tmp_path / "g.npz", "--out", tmp_path / "s", "--no-progress", cwd=tmp_path)
    assert not (tmp_path / "s" / "search.json").exists() and not (tmp_path / "s" / "search.png").exists()
    refused(p, str(gal), "cannot read image")            # names the missing gallery image


# --- mismatches: manifests, output folders, configs, an outdated synthetic set --------------------------------------

def test_evaluate_with_the_manifest_of_another_dataset_names_both(run, tiny, tmp_path):
    params = custom(tiny, tmp_path)
    cli("prepare", "mine", "--params", params, "--manifest", tmp_path / "mine.json", cwd=tmp_path)
    assert (tmp_path / "mine.json").is_file()
    p = cli("evaluate", "--run", run, "--data-root", tiny, "--manifest", tmp_path / "mine.json", "--no-rerank",
            "--no-progress", "--num-workers", "0", cwd=tmp_path)
    refused(p, "mine.json", "'mine'", "'synthetic'")


def test_evaluate_refuses_camera_labels_changed_after_the_data_stage(run, tiny, tmp_path):
    params = custom(tiny, tmp_path)
    cli("prepare", "mine", "--params", params, "--manifest", tmp_path / "mine.json", cwd=tmp_path)
    lst = tmp_path / "data" / "mine" / "list.csv"
    rows = lst.read_text().splitlines()
    i = next(i for i, r in enumerate(rows) if r.endswith(",query"))
    path, pid, cam, split = rows[i].split(",")
    rows[i] = ",".join([path, pid, str((int(cam) + 1) % 3), split])     # same image bytes, another camera
    lst.write_text("\n".join(rows) + "\n")
    p = cli("evaluate", "--params", params, "--run", run, "--dataset", "mine", "--manifest", tmp_path / "mine.json",
            "--metrics", tmp_path / "m.json", "--no-rerank", "--no-progress", "--num-workers", "0", cwd=tmp_path)
    refused(p, f"query/{path}", "labelled", "camid")
    assert not (tmp_path / "m.json").exists()


def test_train_refuses_an_out_folder_inside_the_dataset(tiny, tmp_path):
    root = data_copy(tiny, tmp_path)
    out = root / "synthetic" / "query" / "run"
    p = cli("train", *TINY, "--data-root", root, "--out", out, "--epochs", "1", "--max-batches", "1", cwd=tmp_path)
    refused(p, str(out), "inside the folder of dataset synthetic")
    assert not out.exists()


def test_evaluate_refuses_a_config_whose_input_size_was_edited(run, tiny, tmp_path):
    edited = tmp_path / "run"; shutil.copytree(run, edited)
    cfg = json.loads((edited / "config.json").read_text())
    cfg["model_config"]["input_size"] = [96, 48]
    (edited / "config.json").write_text(json.dumps(cfg))
    p = cli("evaluate", "--run", edited, "--data-root", tiny, "--no-rerank", "--no-progress", "--num-workers", "0",
            cwd=tmp_path)
    refused(p, "config.json", "model_config.input_size [96, 48] but train_config.input_size [64, 32]")


def test_prepare_regenerates_a_synthetic_set_of_an_older_renderer(tiny, tmp_path):
    root = data_copy(tiny, tmp_path)
    marker = root / "synthetic" / "synthetic.json"
    old = {k: v for k, v in json.loads(marker.read_text()).items() if k not in ("version", "generator")}
    marker.write_text(json.dumps(old))                           # a marker as the renderer before versions wrote it
    before = sorted(p.name for p in (root / "synthetic" / "query").iterdir())
    p = cli("prepare", "synthetic", "--root", root, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "made by synthetic renderer version 1 (before versions were recorded)" in p.stdout, p.stdout
    assert "regenerating it" in p.stdout, p.stdout
    new = json.loads(marker.read_text())
    assert new.get("version") and {k: new[k] for k in old} == old        # this renderer's version, the same parameters
    assert sorted(p.name for p in (root / "synthetic" / "query").iterdir()) == before
