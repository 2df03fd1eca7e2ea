"""RIGA in its three shapes: DiscRegion CSVs, RIGA+ CSVs, and the original release."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from edue.cli import main
from edue.data import riga
from edue.data.folder import FolderSource
from edue.data.riga import RigaDiscRegionSource, RigaPlusSource
from edue.data.riga_extract import extract_riga
from edue.data.riga_labels import decode_disc_cup
from edue.data.source import open_source
from edue.data.splits import preset_split
from edue.errors import ConfigError, DataError
from tests.fake_layouts import RigaImage, save_image, write_discregion, write_riga_plus

H, W = 32, 28
HEADER = ",imgName,maskName,label,center,xmin,ymin,xmax,ymax,width,height,discFlag,rater"


def _photo() -> np.ndarray:
    img = np.zeros((H, W, 3), np.uint8)
    img[..., 0] = 120
    img[2, 3] = (255, 0, 0)  # asymmetric marker: pure red at row 2, column 3
    return img


def _label_map(rim: int, cup: int, shift: int = 0) -> np.ndarray:
    """Disc rows 4..27 × cols 6..25; cup rows 10..19 × cols (12+shift)..19."""
    lab = np.zeros((H, W), np.uint8)
    lab[4:28, 6:26] = rim
    lab[10:20, 12 + shift : 20] = cup
    return lab


def _discregion(root: Path) -> None:
    """Two BinRushed images (rim 128) and one Magrabia image (rim 150), six raters whose
    cups start one column further right each."""

    def image(rim: int) -> RigaImage:
        raters = [_label_map(rim, 255, shift=r) for r in range(6)]
        return RigaImage(_photo(), raters, final=_label_map(rim, 255))

    write_discregion(root, {"BinRushed": [image(128), image(128)], "Magrabia": [image(150)]})


def test_discregion_reader(tmp_path: Path) -> None:
    _discregion(tmp_path)
    src = open_source("riga-discregion", str(tmp_path))
    assert src.structures == ("disc", "cup") and len(src) == 3
    assert src.patient_ids == ["BinRushed", "BinRushed", "Magrabia"]
    case = src.load(0)
    assert case.image.shape == (3, H, W)
    assert case.image[:, 2, 3] == pytest.approx([1.0, 0.0, 0.0])
    assert case.image[0, 0, 0] == pytest.approx(120 / 255)
    assert case.masks.shape == (6, 2, H, W)
    assert case.meta["raters"] == [f"Rater{r}" for r in range(1, 7)]
    assert case.meta["encoding"] == ["discregion"] and case.meta["label_values"] == [0, 128, 255]
    disc = np.zeros((H, W), np.uint8)
    disc[4:28, 6:26] = 1
    for r in range(6):
        cup = np.zeros((H, W), np.uint8)
        cup[10:20, 12 + r : 20] = 1
        np.testing.assert_array_equal(case.masks[r, 0], disc)
        np.testing.assert_array_equal(case.masks[r, 1], cup)
    magrabia = src.load(2)  # rim stored as 150
    assert magrabia.meta["label_values"] == [0, 150, 255]
    assert magrabia.masks[0, 1].sum() == 80 and magrabia.masks[0, 0].sum() == 480
    only = RigaDiscRegionSource(tmp_path, sites=["magrabia"], size=16)
    small = only.load(0)
    assert only.case_ids == ["Magrabia-DiscRegion_Magrabia_image1"]
    assert small.image.shape == (3, 16, 16) and small.masks.shape == (6, 2, 16, 16)
    assert small.masks[0, 1, 8, 9] == 1 and small.masks[0, :, 0, 0].sum() == 0
    forced = RigaDiscRegionSource(tmp_path, encoding="rigaplus").load(0)
    np.testing.assert_array_equal(forced.masks[0, 1], disc - case.masks[0, 1])  # the rim


def test_discregion_errors(tmp_path: Path) -> None:
    _discregion(tmp_path)
    (tmp_path / "DiscRegion" / "BinRushed" / "image2-Rater4.png").unlink()
    src = RigaDiscRegionSource(tmp_path, sites=["BinRushed"])
    with pytest.raises(DataError, match="not found") as err:
        src.load(1)
    assert "image2-Rater4.png" in str(err.value)
    with pytest.raises(ConfigError):
        RigaDiscRegionSource(tmp_path, sites=["Nowhere"])
    with pytest.raises(ConfigError):
        RigaDiscRegionSource(tmp_path, encoding="weird")


def test_decode_auto_and_odd_values(tmp_path: Path) -> None:
    where = tmp_path / "m.png"
    plus = _label_map(255, 128)  # RIGA+ convention: 255 disc rim, 128 cup
    masks, used = decode_disc_cup(plus, "auto", "discregion", where)
    assert used == "rigaplus" and masks[1].sum() == 80 and masks[0].sum() == 480
    masks, used = decode_disc_cup(_label_map(128, 255), "auto", "rigaplus", where)
    assert used == "discregion" and masks[1].sum() == 80
    odd = _label_map(128, 255)
    odd[0, 0] = 77
    with pytest.raises(DataError, match="unexpected label values") as err:
        decode_disc_cup(odd, "auto", "discregion", where)
    assert "m.png" in str(err.value)


def _riga_plus(root: Path, n_raters: int = 3) -> None:
    """Two BinRushed training images, one Magrabia test image, and a CSV of unlabeled
    images; rater ``k``'s cup starts ``k`` columns further right."""

    def image() -> RigaImage:
        return RigaImage(_photo(), [_label_map(255, 128, shift=k) for k in range(1, n_raters + 1)])

    csvs = {
        "BinRushed_train": ("BinRushed", {"image1": image(), "image2": image()}),
        "Magrabia_test": ("Magrabia", {"image7": image()}),
    }
    write_riga_plus(root, csvs, unlabeled={"MESSIDOR_Base1_unlabeled": ["x/none.tif"]})


def test_riga_plus_reader(tmp_path: Path) -> None:
    _riga_plus(tmp_path)
    src = open_source("riga-plus", str(tmp_path))
    assert src.case_ids == [
        "BinRushed_train-image1",
        "BinRushed_train-image2",
        "Magrabia_test-image7",
    ]
    case = src.load(2)
    assert case.n_raters == 3 and case.meta["encoding"] == ["rigaplus"]
    assert case.image[:, 2, 3] == pytest.approx([1.0, 0.0, 0.0])
    for k in range(3):  # cup = the 128 region, disc = everything non-zero
        assert case.masks[k, 1, 10, 12 + k + 1] == 1 and case.masks[k, 1, 10, 12 + k] == 0
        assert case.masks[k, 0].sum() == 480
    assert len(RigaPlusSource(tmp_path, subsets=["test"])) == 1
    assert len(RigaPlusSource(tmp_path, sites=["binrushed"])) == 2
    forced = RigaPlusSource(tmp_path, encoding="discregion").load(0)
    assert forced.masks[0, 1, 4, 6] == 1 and forced.masks[0, 1, 10, 14] == 0
    (tmp_path / "BinRushed" / "masks" / "image2-2.tif").unlink()
    with pytest.raises(DataError, match="missing rater file image2-2.tif"):
        src.load(1)


# --------------------------------------------------------------------------- original release
S = 96


def _ring(radius: float, centre: tuple[float, float]) -> np.ndarray:
    yy, xx = np.mgrid[:S, :S]
    return np.abs(np.hypot(yy - centre[0], xx - centre[1]) - radius) <= 1.0


def _filled(radius: float, centre: tuple[float, float]) -> np.ndarray:
    yy, xx = np.mgrid[:S, :S]
    return np.hypot(yy - centre[0], xx - centre[1]) <= radius + 1.0


def _fundus() -> np.ndarray:
    yy, xx = np.mgrid[:S, :S]
    img = np.stack([150 + yy // 2, 60 + xx // 3, 30 + 0 * xx], -1)
    return img.astype(np.uint8)


def _annotated(curves: list[np.ndarray]) -> np.ndarray:
    img = _fundus()
    for c in curves:
        img[c] = (0, 255, 0)
    return img


DISC, CUP = (34.0, (48.0, 46.0)), (13.0, (50.0, 49.0))


def _original(src: Path) -> None:
    good = src / "BinRushed" / "BinRushed1-Corrected"
    save_image(good / "image1prime.tif", _fundus())
    for name, cup_r in (("Image1-1.tif", 13.0), ("image1-2.jpg", 12.0), ("image1-3.TIF", 14.0)):
        save_image(good / name, _annotated([_ring(*DISC), _ring(cup_r, CUP[1])]))
    bad = src / "MESSIDOR" / "sub"
    save_image(bad / "image2prime.tif", _fundus())
    save_image(bad / "image2-1.tif", _annotated([_ring(20.0, (48, 30)), _ring(12.0, (48, 80))]))
    one = src / "Magrabia" / "MagrabiaMale"
    save_image(one / "image4prime.tif", _fundus())
    save_image(one / "image4-1.tif", _annotated([_ring(*DISC)]))
    fem = src / "Magrabia" / "MagrabiFemale"
    save_image(fem / "IMAGE5PRIME.tif", _fundus())
    save_image(fem / "image5-1.tif", _annotated([_ring(*DISC), _ring(*CUP)]))


def test_extract_original_release(tmp_path: Path) -> None:
    _original(tmp_path / "src")
    report = extract_riga(tmp_path / "src", tmp_path / "out")
    assert report.extracted == [
        "BinRushed-BinRushed1-Corrected-image1",
        "Magrabia-MagrabiFemale-image5",
    ]
    reasons = dict(report.rejected)
    assert len(reasons) == 2
    assert any("image2-1.tif" in k and "not inside the disc" in v for k, v in reasons.items())
    assert any("image4-1.tif" in k and "found 1 closed curves" in v for k, v in reasons.items())
    assert "rejected 2 cases" in (tmp_path / "out" / "extract_report.txt").read_text()
    ds = FolderSource(tmp_path / "out")
    assert ds.case_ids == report.extracted and ds.patient_ids == ["BinRushed", "Magrabia"]
    case = ds.load(0)
    assert case.image.shape == (3, S, S) and case.masks.shape == (3, 2, S, S)
    np.testing.assert_allclose(case.image[:, 10, 20] * 255, _fundus()[10, 20], atol=0.6)
    for r, cup_r in enumerate((13.0, 12.0, 14.0)):
        disc, cup = case.masks[r, 0].astype(bool), case.masks[r, 1].astype(bool)
        expected_disc, expected_cup = _filled(*DISC), _filled(cup_r, CUP[1])
        assert (disc & expected_disc).sum() / (disc | expected_disc).sum() > 0.95
        assert (cup & expected_cup).sum() / (cup | expected_cup).sum() > 0.9
        assert not (cup & ~disc).any()
    # the JPEG copy (rater 2) drew a smaller cup than rater 3
    assert case.masks[1, 1].sum() < case.masks[2, 1].sum()
    assert preset_split("riga-standard", ds.case_ids, ds.patient_ids) == {"train": [0], "test": [1]}


def test_extract_names_the_missing_copies(tmp_path: Path) -> None:
    lone = tmp_path / "src" / "BinRushed"
    save_image(lone / "image6prime.tif", _fundus())
    report = extract_riga(tmp_path / "src", tmp_path / "out")
    assert report.extracted == []
    assert report.rejected == [(str(lone / "image6prime.tif"), "no annotated copies image6-<k>")]
    assert report.lines() == [
        f"extracted 0 cases to {tmp_path / 'out'}",
        "rejected 1 cases",
        f"  {lone / 'image6prime.tif'}: no annotated copies image6-<k>",
    ]


def test_extract_command_and_empty(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _original(tmp_path / "src")
    assert main(["data", "riga-extract", str(tmp_path / "src"), "--out", str(tmp_path / "o")]) == 0
    assert "extracted 2 cases" in capsys.readouterr().out
    lone = tmp_path / "lone" / "BinRushed"
    save_image(lone / "image6prime.tif", _fundus())  # a clean image without annotated copies
    assert main(["data", "riga-extract", str(tmp_path / "lone"), "--out", str(tmp_path / "o")]) == 2
    out = capsys.readouterr().out
    assert "extracted 0 cases" in out and "rejected 1 cases" in out
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no RIGA images"):
        extract_riga(tmp_path / "empty", tmp_path / "o2")


# --------------------------------------------------------------------------- cup/rim decision
def _reference_decode(
    label: np.ndarray, encoding: str, default: str, where: Path
) -> tuple[np.ndarray, str]:
    """The decision as first written: a binary dilation of the background per level."""
    from scipy.ndimage import binary_dilation

    if where.suffix.lower() in (".jpg", ".jpeg"):
        middle, high = (label >= 64) & (label < 200), label >= 200
    else:
        middle, high = (label > 0) & (label < 255), label == 255
    used = encoding
    if encoding == "auto":
        background = ~(middle | high)
        near = binary_dilation(background)
        touch_mid, touch_high = int((middle & near).sum()), int((high & near).sum())
        if middle.any() and high.any() and touch_mid != touch_high:
            used = "discregion" if touch_high < touch_mid else "rigaplus"
        else:
            used = default
    cup = high if used == "discregion" else middle
    return np.stack([middle | high, cup]).astype(np.uint8), used


def _blob(
    shape: tuple[int, int],
    centre: tuple[float, float],
    radii: tuple[float, float],
    rng: np.random.Generator,
) -> np.ndarray:
    """A filled ellipse with a wobbly outline (a few random low harmonics)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    dy, dx = (yy - centre[0]) / radii[0], (xx - centre[1]) / radii[1]
    angle = np.arctan2(dy, dx)
    outline = np.ones(shape)
    for k in (2, 3, 5):
        outline += rng.uniform(0, 0.06) * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
    return np.asarray(np.hypot(dy, dx) <= outline)


def _realistic_map(rng: np.random.Generator, rim: int, cup: int) -> np.ndarray:
    """A rater's disc/cup map: nested wobbly ellipses, off-centre, maybe cut by the border."""
    h, w = int(rng.integers(24, 140)), int(rng.integers(24, 140))
    kind = rng.choice(["centred", "off-centre", "border", "cup-at-rim", "speckled"])
    ry, rx = rng.uniform(0.2, 0.45) * h, rng.uniform(0.2, 0.45) * w
    cy, cx = h / 2 + rng.normal(0, 1), w / 2 + rng.normal(0, 1)
    if kind == "off-centre":
        cy, cx = cy + rng.uniform(-0.2, 0.2) * h, cx + rng.uniform(-0.2, 0.2) * w
    elif kind == "border":  # the disc runs off one or two sides of the picture
        cy = rng.choice([rng.uniform(-0.1, 0.15), rng.uniform(0.85, 1.1), cy / h]) * h
        cx = rng.choice([rng.uniform(-0.1, 0.15), rng.uniform(0.85, 1.1)]) * w
    disc = _blob((h, w), (cy, cx), (ry, rx), rng)
    scale = rng.uniform(0.3, 0.7) if kind != "cup-at-rim" else rng.uniform(0.8, 1.05)
    shift = rng.normal(0, 0.1, 2) * (ry, rx)
    cup_region = _blob((h, w), (cy + shift[0], cx + shift[1]), (ry * scale, rx * scale), rng)
    if rng.random() < 0.7:
        cup_region &= disc  # most raters keep the cup inside their disc
    lab = np.zeros((h, w), np.uint8)
    lab[disc] = rim
    lab[cup_region] = cup
    if kind == "speckled":  # isolated pixels of any level, as hand-drawn masks have
        n = int(rng.integers(1, 30))
        lab[rng.integers(0, h, n), rng.integers(0, w, n)] = rng.choice([0, rim, cup], n)
    return lab


@pytest.mark.parametrize(("rim", "cup"), [(128, 255), (150, 255), (255, 128), (255, 150)])
def test_decision_equals_the_dilation_reference(tmp_path: Path, rim: int, cup: int) -> None:
    rng = np.random.default_rng(rim * 1000 + cup)
    where, lossy = tmp_path / "m.png", tmp_path / "m.jpg"
    seen = set()
    for _ in range(150):
        lab = _realistic_map(rng, rim, cup)
        jpeg = np.clip(lab + rng.normal(0, 12, lab.shape), 0, 255).astype(np.uint8)
        for label, path in ((lab, where), (jpeg, lossy)):
            for encoding in ("auto", "discregion", "rigaplus"):
                for default in ("discregion", "rigaplus"):
                    masks, used = decode_disc_cup(label, encoding, default, path)
                    ref_masks, ref_used = _reference_decode(label, encoding, default, path)
                    assert used == ref_used
                    np.testing.assert_array_equal(masks, ref_masks)
                    if encoding == "auto" and path is where:
                        seen.add(used if used != default else "default")
    assert {"discregion", "rigaplus"} <= seen  # the maps exercise both outcomes


def test_decision_edge_maps(tmp_path: Path) -> None:
    where = tmp_path / "m.tif"
    maps = [np.zeros((5, 4), np.uint8), np.full((5, 4), 255, np.uint8), np.full((1, 7), 128)]
    maps.append(np.array([[0, 128, 255, 255, 128, 0]], np.uint8))  # a single row
    maps.append(np.array([[255, 255], [128, 0]], np.uint8))
    full = np.full((9, 9), 128, np.uint8)
    full[3:6, 3:6] = 255  # the disc fills the picture: the border is not background
    maps += [full, np.where(full == 255, 128, 255).astype(np.uint8)]
    both = _label_map(128, 255)
    both[:, :3] = 255  # a second 255 region along the left border
    maps += [both, np.where(both == 255, 128, np.where(both == 128, 255, 0))]
    for label in maps:
        for default in ("discregion", "rigaplus"):
            masks, used = decode_disc_cup(label, "auto", default, where)
            ref_masks, ref_used = _reference_decode(label, "auto", default, where)
            assert used == ref_used
            np.testing.assert_array_equal(masks, ref_masks)
    two = _label_map(128, 255).astype(np.uint16)
    two[0, 0] = 300  # a second level besides 128, as always
    with pytest.raises(DataError, match=re.escape("unexpected label values [0, 128, 255, 300]")):
        decode_disc_cup(two, "auto", "discregion", where)


def _bump(path: Path, seconds: int) -> None:
    """Move a file's modification time, so a rewrite is seen whatever the clock's grain."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


def _count_listings(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The folders listed through ``Path.iterdir`` from now on."""
    listings: list[Path] = []
    iterdir = Path.iterdir

    def counted(self: Path) -> Iterator[Path]:
        listings.append(self)
        return iterdir(self)

    monkeypatch.setattr(Path, "iterdir", counted)
    return listings


def test_discregion_second_load_served_from_its_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _discregion(tmp_path)
    csv_path = tmp_path / "Glaucoma_multirater_BinRushed.csv"
    text = csv_path.read_bytes().decode("gbk")  # listed in another letter case than on disk
    csv_path.write_bytes(
        text.replace("DiscRegion\\BinRushed", "discregion\\BINRUSHED").encode("gbk")
    )
    src = RigaDiscRegionSource(tmp_path)
    listings = _count_listings(monkeypatch)
    first = src.load(0)
    assert listings  # the files were looked for, letter case aside
    listings.clear()
    again = src.load(0)
    assert listings == []  # found again from the source's index
    np.testing.assert_array_equal(again.masks, first.masks)
    assert again.meta == first.meta and first.meta["encoding"] == ["discregion"]
    # a rewritten file (here in the RIGA+ convention) is decided again
    rater1 = tmp_path / "DiscRegion" / "BinRushed" / "image1-Rater1.png"
    Image.fromarray(_label_map(255, 128)).save(rater1)
    _bump(rater1, 5)
    changed = src.load(0)
    assert changed.meta["encoding"] == ["discregion", "rigaplus"]
    np.testing.assert_array_equal(changed.masks[0], first.masks[0])  # cup still the cup
    np.testing.assert_array_equal(changed.masks[1:], first.masks[1:])
    # and decided again when rewritten back
    Image.fromarray(_label_map(128, 255)).save(rater1)
    _bump(rater1, 10)
    assert src.load(0).meta["encoding"] == ["discregion"]
    # a file gone since it was found is reported as before
    rater1.unlink()
    with pytest.raises(DataError, match="not found") as err:
        src.load(0)
    assert "image1-Rater1.png" in str(err.value)
    # a forced convention is applied on every load, the nesting notwithstanding
    forced = RigaDiscRegionSource(tmp_path, encoding="rigaplus")
    for _ in range(2):
        case = forced.load(1)
        assert case.meta["encoding"] == ["rigaplus"]
        np.testing.assert_array_equal(case.masks[:, 1], first.masks[:, 0] - first.masks[:, 1])


def test_discregion_label_values_and_odd_maps(tmp_path: Path) -> None:
    _discregion(tmp_path)
    folder = tmp_path / "DiscRegion" / "BinRushed"
    odd = {  # stored maps of other types; each must decode as the reference does
        "image1-Rater1.png": _label_map(150, 0),  # a single level
        "image1-Rater2.png": np.zeros((H, W), np.uint8),
        "image1-Rater3.png": _label_map(255, 128, shift=3),
    }
    for name, lab in odd.items():
        Image.fromarray(lab).save(folder / name)
    # image 2 as TIFFs (raters' names follow the FinalLabel's): 16-bit, signed, 8-bit
    for r in range(1, 7):
        tifffile.imwrite(
            folder / f"image2-Rater{r}.tif", np.asarray(Image.open(folder / f"image2-Rater{r}.png"))
        )
    wide = _label_map(128, 255).astype(np.uint16)  # a level outside [0, 255] is neither
    tifffile.imwrite(folder / "image2-Rater1.tif", np.where(wide == 128, 300, wide))
    tifffile.imwrite(folder / "image2-Rater2.tif", _label_map(150, 255).astype(np.int16))
    csv_path = tmp_path / "Glaucoma_multirater_BinRushed.csv"
    text = csv_path.read_bytes().decode("gbk")
    text = text.replace("image2-FinalLabel.png", "image2-FinalLabel.tif")
    csv_path.write_bytes(text.encode("gbk"))
    src = RigaDiscRegionSource(tmp_path, sites=["BinRushed"])
    for index in (0, 1, 0, 1):
        case = src.load(index)
        files = src.rater_files(index)
        values: set[int] = set()
        for r, path in enumerate(files.values()):
            label = tifffile.imread(path) if path.suffix == ".tif" else np.asarray(Image.open(path))
            ref, _ = _reference_decode(label, "auto", "discregion", path)
            np.testing.assert_array_equal(case.masks[r], ref)
            values.update(np.unique(label).tolist())
        assert case.meta["label_values"] == sorted(values)
    assert src.load(0).meta["encoding"] == ["discregion", "rigaplus"]
    assert src.load(1).meta["label_values"] == [0, 128, 150, 255, 300]


def _listed_rater_files(folder: Path, stem: str, suffix: str) -> dict[int, Path]:
    """The rater files of a RIGA+ mask by a full look through the folder."""
    pattern = re.compile(rf"^{re.escape(stem)}-(\d+){re.escape(suffix)}$", re.IGNORECASE)
    return {int(m.group(1)): p for p in folder.iterdir() if (m := pattern.match(p.name))}


def test_riga_plus_lists_each_folder_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _riga_plus(tmp_path)
    masks = tmp_path / "BinRushed" / "masks"
    src = RigaPlusSource(tmp_path)
    listings = _count_listings(monkeypatch)
    first = [src.load(i) for i in range(3)]
    assert sorted(listings) == sorted([masks, tmp_path / "Magrabia" / "masks"])
    again = [src.load(i) for i in range(3)]
    assert len(listings) == 2
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.masks, b.masks)
        assert a.meta == b.meta
    # a new rater file is seen, whatever letter case it is written in
    tifffile.imwrite(masks / "IMAGE1-4.TIF", _label_map(255, 128, shift=4))
    _bump(masks, 5)
    assert src.load(0).n_raters == 4
    # a rater file gone without the folder's stamp changing is still missed
    monkeypatch.setattr(riga, "_file_stamp", lambda path: (0, 0, 0, 0))
    src.load(1)
    (masks / "image2-2.tif").unlink()
    with pytest.raises(DataError, match="missing rater file image2-2.tif"):
        src.load(1)


def test_riga_plus_rater_names_match_the_full_look(tmp_path: Path) -> None:
    folder = tmp_path / "BinRushed" / "masks"
    folder.mkdir(parents=True)
    (tmp_path / "BinRushed" / "images").mkdir()
    names = ["a-1.tif", "A-2.TIF", "a-1-1.tif", "a-1-2.Tif", "a-x.tif", "a-3.png", "b.1-1.tif"]
    names += ["b.1-2.tif", "c-01.tif", "c-2.tif", "d-1", "d-2", "a.tif", "e--1.tif", "e-1.tif"]
    for name in names:
        (folder / name).write_bytes(b"")
    stems = ["a", "a-1", "b.1", "c", "d", "e-", "e"]
    rows = ["image,mask"]
    for stem in stems:
        suffix = "" if stem == "d" else ".tif"
        rows.append(f"BinRushed/images/{stem}{suffix},BinRushed/masks/{stem}{suffix}")
    (tmp_path / "BinRushed_train.csv").write_text("\n".join(rows) + "\n")
    src = RigaPlusSource(tmp_path)
    for index, stem in enumerate(stems):
        suffix = "" if stem == "d" else ".tif"
        expected = _listed_rater_files(folder, stem, suffix)
        found = src.rater_files(index)
        assert found == {f"rater{k}": expected[k] for k in sorted(expected)}
