"""DICOM input and output of ``edue predict``: series read from synthetic files (slice
order, values, geometry against nibabel), the errors a broken folder gives, and the
Segmentation / Parametric Maps read back with highdicom."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from edue.engine.predict.dicom import DicomSeries, find_dicom_series  # noqa: E402
from edue.engine.predict.dicom_out import write_dicom_outputs  # noqa: E402
from edue.errors import ConfigError, DataError  # noqa: E402

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
OP_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.5.1"
ROWS, COLS, SLICES = 12, 10, 5
PIXEL_SPACING = (0.7, 0.9)  # between rows, between columns
SLICE_SPACING = 2.5
SLOPE, INTERCEPT = 2.0, -1024.0


def rotation(degrees_x: float = 20.0, degrees_z: float = 10.0) -> np.ndarray:
    """An oblique rotation: about x, then about z."""
    a, b = np.radians(degrees_x), np.radians(degrees_z)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return rz @ rx


@dataclass
class CTSeries:
    """What was written: per slice (in slice order) the stored pixels, position, file."""

    uid: str
    row: np.ndarray
    col: np.ndarray
    normal: np.ndarray
    stored: list[np.ndarray] = field(default_factory=list)
    positions: list[np.ndarray] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    sop_uids: list[str] = field(default_factory=list)

    def rescaled(self) -> np.ndarray:
        """``[slice, row, col]`` in modality units."""
        return np.stack(self.stored).astype(np.float64) * SLOPE + INTERCEPT


def base_dataset(sop_class: str, modality: str, study: dict, series_uid: str) -> Dataset:
    """A dataset with file meta and the patient / study / series attributes."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SOPClassUID = sop_class
    ds.Modality = modality
    ds.update(study)
    ds.SeriesInstanceUID = series_uid
    ds.SeriesDate, ds.SeriesTime = "20240102", "101500"
    ds.Manufacturer = "test"
    return ds


def a_study() -> dict:
    ds = Dataset()
    ds.PatientID, ds.PatientName = "P1", "Doe^Jane"
    ds.PatientBirthDate, ds.PatientSex = "19700101", "F"
    ds.StudyInstanceUID, ds.StudyID = generate_uid(), "S1"
    ds.StudyDate, ds.StudyTime = "20240102", "101500"
    ds.AccessionNumber, ds.ReferringPhysicianName = "A1", "Doe^John"
    return {el.keyword: el.value for el in ds}


def make_ct_series(
    folder: Path,
    seed: int = 0,
    series_number: int = 1,
    study: dict | None = None,
    orientations: dict[int, np.ndarray] | None = None,
    gaps: list[float] | None = None,
) -> CTSeries:
    """Write an oblique CT series of 5 slices of 12×10 pixels, files in shuffled order.

    Args:
        folder: where the files go (``ct<seed>_<n>.dcm``).
        seed: the pixels' and file order's seed.
        series_number: SeriesNumber.
        study: patient / study attributes (a new study when ``None``).
        orientations: slice index -> 3×3 rotation overriding the series' one.
        gaps: the 4 gaps between slices in mm (default: even 2.5 mm).
    """
    study = study or a_study()
    rot = rotation()
    series = CTSeries(generate_uid(), rot[:, 0], rot[:, 1], rot[:, 2])
    frame_of_reference = generate_uid()
    origin = np.array([-30.0, 12.5, 80.0])
    offsets = np.concatenate([[0.0], np.cumsum(gaps or [SLICE_SPACING] * (SLICES - 1))])
    rng = np.random.default_rng(seed)
    order = list(range(SLICES))
    random.Random(seed).shuffle(order)
    for k in range(SLICES):
        r = (orientations or {}).get(k, rot)
        ds = base_dataset(CT_STORAGE, "CT", study, series.uid)
        ds.SeriesNumber, ds.InstanceNumber = series_number, order.index(k) + 1
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference, ""
        position = origin + offsets[k] * rot[:, 2]
        ds.ImagePositionPatient = [float(v) for v in position]
        ds.ImageOrientationPatient = [float(v) for v in (*r[:, 0], *r[:, 1])]
        ds.PixelSpacing = list(PIXEL_SPACING)
        ds.SliceThickness = SLICE_SPACING
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = SLOPE, INTERCEPT, "HU"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.KVP, ds.AcquisitionNumber = 120, 1
        stored = rng.integers(0, 3000, size=(ROWS, COLS), dtype=np.uint16)
        ds.set_pixel_data(stored, "MONOCHROME2", 12)
        path = folder / f"ct{seed}_{order.index(k)}.dcm"
        ds.save_as(path, enforce_file_format=True)
        series.stored.append(stored)
        series.positions.append(position)
        series.files.append(path)
        series.sop_uids.append(str(ds.SOPInstanceUID))
    return series


def make_planar(
    folder: Path, name: str, modality: str, pixels: np.ndarray, spacing: bool = True
) -> Path:
    """Write one single-frame 2D instance (RGB when ``pixels`` has 3 channels last)."""
    sop_class = OP_STORAGE if modality == "OP" else DX_STORAGE
    ds = base_dataset(sop_class, modality, a_study(), generate_uid())
    ds.SeriesNumber, ds.InstanceNumber = 7, 1
    if modality == "DX":
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImagerPixelSpacing = [0.2, 0.3]
        if spacing:
            ds.PixelSpacing = [0.2, 0.3]
    else:
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
    photometric = "RGB" if pixels.ndim == 3 else "MONOCHROME2"
    ds.set_pixel_data(pixels, photometric, pixels.dtype.itemsize * 8)
    if modality == "OP":
        ds.NumberOfFrames = 1  # the Ophthalmic Photography IOD is multi-frame
    path = folder / name
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def ct(tmp_path: Path) -> tuple[CTSeries, DicomSeries]:
    folder = tmp_path / "ct"
    folder.mkdir()
    written = make_ct_series(folder)
    (series,) = find_dicom_series(folder)
    return written, series


# ------------------------------------------------------------------------------- reading
def test_ct_series_array_values_and_slice_order(ct):
    written, series = ct
    assert series.uid == written.uid
    assert series.spatial_dims == 3 and series.modality == "CT"
    assert series.image.shape == (1, COLS, ROWS, SLICES)
    assert series.image.dtype == np.float32
    np.testing.assert_array_equal(series.image[0], written.rescaled().transpose(2, 1, 0))
    assert series.files == written.files  # slice order, not the files' (shuffled) order
    assert [ds.SOPInstanceUID for ds in series.datasets] == written.sop_uids
    assert series.spacing == pytest.approx((PIXEL_SPACING[1], PIXEL_SPACING[0], SLICE_SPACING))


def test_ct_affine_maps_voxels_to_patient_positions(ct):
    written, series = ct
    ras = np.diag([-1.0, -1.0, 1.0])
    for k in range(SLICES):  # voxel (0, 0, k) is the first pixel of slice k
        world = series.affine @ np.array([0, 0, k, 1.0])
        np.testing.assert_allclose(world[:3], ras @ written.positions[k], atol=1e-6)
    step_i = series.affine @ [1, 0, 0, 1.0] - series.affine @ [0, 0, 0, 1.0]
    step_j = series.affine @ [0, 1, 0, 1.0] - series.affine @ [0, 0, 0, 1.0]
    np.testing.assert_allclose(step_i[:3], ras @ written.row * PIXEL_SPACING[1], atol=1e-6)
    np.testing.assert_allclose(step_j[:3], ras @ written.col * PIXEL_SPACING[0], atol=1e-6)


def test_ct_geometry_agrees_with_a_nifti_of_the_same_data(ct, tmp_path):
    import nibabel as nib

    from edue.io import read_image

    written, series = ct
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(series.image[0], series.affine), str(path))
    image, meta = read_image(path)
    np.testing.assert_array_equal(image, series.image)
    assert meta.spacing == pytest.approx(series.spacing, abs=1e-5)
    # column i runs along the row cosine, row j along the column cosine, k the normal
    expected = ras_axcodes(np.stack([written.row, written.col, written.normal], 1))
    assert nib.aff2axcodes(meta.affine) == expected
    for voxel in [(0, 0, 0), (COLS - 1, 0, 2), (3, ROWS - 1, SLICES - 1), (4, 7, 1)]:
        i, j, k = voxel
        lps = written.positions[k] + i * PIXEL_SPACING[1] * written.row
        lps = lps + j * PIXEL_SPACING[0] * written.col
        world = nib.affines.apply_affine(meta.affine, voxel)
        np.testing.assert_allclose(world, lps * [-1, -1, 1], atol=1e-3)


def ras_axcodes(lps_directions: np.ndarray) -> tuple[str, ...]:
    """nibabel's axis codes of the voxel axes whose LPS directions are the columns."""
    codes = []
    for v in (lps_directions * np.array([[-1.0], [-1.0], [1.0]])).T:  # LPS -> RAS
        axis = int(np.abs(v).argmax())
        codes.append("RAS"[axis] if v[axis] > 0 else "LPI"[axis])
    return tuple(codes)


def test_two_series_in_one_folder_are_split_by_uid(tmp_path):
    study = a_study()
    (tmp_path / "b").mkdir()
    second = make_ct_series(tmp_path / "b", seed=1, series_number=2, study=study)
    first = make_ct_series(tmp_path, seed=2, series_number=1, study=study)
    (tmp_path / "notes.json").write_text("{}")
    (tmp_path / "preview.png").write_bytes(b"not an image either")
    series = find_dicom_series(tmp_path)
    assert [s.uid for s in series] == [first.uid, second.uid]  # by SeriesNumber
    assert [s.files for s in series] == [first.files, second.files]
    np.testing.assert_array_equal(series[1].image[0], second.rescaled().transpose(2, 1, 0))
    assert len({s.name for s in series}) == 2
    assert all(s.name.startswith(f"{n}_CT_") for s, n in zip(series, (1, 2), strict=True))


def test_mixed_orientations_name_the_file(tmp_path):
    written = make_ct_series(tmp_path, orientations={3: rotation(35.0, 10.0)})
    with pytest.raises(DataError, match="orientation") as info:
        find_dicom_series(tmp_path)
    assert info.value.path == str(written.files[3])
    assert "\n" not in str(info.value)


def test_uneven_slice_spacing_is_an_error(tmp_path):
    make_ct_series(tmp_path, gaps=[2.5, 2.5, 5.0, 2.5])
    with pytest.raises(DataError, match="uneven slice spacing"):
        find_dicom_series(tmp_path)


def test_duplicate_slice_positions_are_an_error(tmp_path):
    make_ct_series(tmp_path, gaps=[2.5, 0.0, 2.5, 2.5])
    with pytest.raises(DataError, match="same position"):
        find_dicom_series(tmp_path)


@pytest.mark.parametrize("damage", ["random", "truncated"])
def test_corrupt_dicom_file_is_named(tmp_path, damage):
    written = make_ct_series(tmp_path)
    bad = written.files[2]
    data = bad.read_bytes()
    if damage == "random":
        noise = np.random.default_rng(0).integers(0, 256, 600, dtype=np.uint8).tobytes()
        bad.write_bytes(b"\0" * 128 + b"DICM" + noise)
    else:
        bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as info:
        find_dicom_series(tmp_path)
    assert info.value.path == str(bad)


def test_rgb_photograph_is_scaled_like_a_png(tmp_path):
    pixels = np.random.default_rng(3).integers(0, 256, (ROWS, COLS, 3), dtype=np.uint8)
    make_planar(tmp_path, "fundus.dcm", "OP", pixels)
    (series,) = find_dicom_series(tmp_path)
    assert series.spatial_dims == 2 and series.affine is None and series.modality == "OP"
    assert series.image.shape == (3, ROWS, COLS)
    np.testing.assert_allclose(series.image, np.moveaxis(pixels, -1, 0) / 255.0, atol=1e-7)


def test_grayscale_radiograph_keeps_its_values(tmp_path):
    pixels = np.random.default_rng(4).integers(0, 4096, (ROWS, COLS), dtype=np.uint16)
    make_planar(tmp_path, "chest", "DX", pixels)  # no suffix: still read
    (series,) = find_dicom_series(tmp_path)
    assert series.image.shape == (1, ROWS, COLS)
    np.testing.assert_array_equal(series.image[0], pixels.astype(np.float32))
    assert series.spacing == pytest.approx((0.2, 0.3))


def test_single_slice_ct_is_a_2d_image(tmp_path):
    written = make_ct_series(tmp_path)
    for path in written.files[1:]:
        path.unlink()
    (series,) = find_dicom_series(tmp_path)
    assert series.spatial_dims == 2 and series.affine is None
    np.testing.assert_array_equal(series.image[0], written.rescaled()[0])


def test_missing_pydicom_names_the_extra(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("pydicom", "highdicom") else real(name, *a),
    )
    with pytest.raises(ConfigError, match=r"'pydicom'.*pip install 'edue\[dicom\]'") as info:
        find_dicom_series(tmp_path)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------- writing
def test_seg_and_parametric_maps_round_trip(ct, tmp_path):
    written, series = ct
    structures = ("liver", "tumour")
    rng = np.random.default_rng(5)
    mean = rng.random((2, COLS, ROWS, SLICES)).astype(np.float32)
    uncertainty = (rng.random((2, COLS, ROWS, SLICES)) * 0.25).astype(np.float32)
    out = tmp_path / "out"
    paths = write_dicom_outputs(series, mean, uncertainty, structures, out, "case/ct")
    assert paths == {
        "seg": "case/ct_seg.dcm",
        "uncertainty": {s: f"case/ct_uncertainty_{s}.dcm" for s in structures},
    }
    seg = hd.seg.segread(out / paths["seg"])
    assert seg.SegmentationType == "FRACTIONAL"
    assert seg.SegmentationFractionalType == "PROBABILITY"
    assert seg.MaximumFractionalValue == 255
    assert seg.Manufacturer == "edue" and seg.PatientID == "P1"
    assert seg.StudyInstanceUID == series.datasets[0].StudyInstanceUID
    labels = [seg.get_segment_description(k + 1).segment_label for k in range(2)]
    assert labels == list(structures)
    assert {uid[2] for uid in seg.get_source_image_uids()} == set(written.sop_uids)
    expected = np.around(mean.astype(np.float64) * 255).transpose(3, 2, 1, 0)  # [z, r, c, K]
    check_frames(seg, written, expected, "ReferencedSegmentNumber")
    for k, structure in enumerate(structures):
        pm = pydicom.dcmread(out / paths["uncertainty"][structure])
        assert pm.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"
        mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
        assert mapping.LUTLabel == "uncertainty" and structure in mapping.LUTExplanation
        assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "1"
        assert pm.InstanceNumber == k + 1
        truth = uncertainty[k].transpose(2, 1, 0)[..., None]  # [z, r, c, 1]
        check_frames(pm, written, truth, None)


def check_frames(
    dataset: Dataset, written: CTSeries, expected: np.ndarray, segment_key: str | None
) -> None:
    """Every frame sits on its source slice and holds that slice's expected stored values
    ``expected[slice, row, col, segment]``."""
    frames = dataset.pixel_array.reshape(int(dataset.NumberOfFrames), ROWS, COLS)
    shared = dataset.SharedFunctionalGroupsSequence[0]
    orientation = shared.PlaneOrientationSequence[0].ImageOrientationPatient
    np.testing.assert_allclose(orientation, [*written.row, *written.col], atol=1e-6)
    np.testing.assert_allclose(shared.PixelMeasuresSequence[0].PixelSpacing, PIXEL_SPACING)
    seen = set()
    for n, item in enumerate(dataset.PerFrameFunctionalGroupsSequence):
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        k = written.sop_uids.index(source.ReferencedSOPInstanceUID)
        position = item.PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose(position, written.positions[k], atol=1e-4)
        s = item.SegmentIdentificationSequence[0].get(segment_key) - 1 if segment_key else 0
        np.testing.assert_array_equal(frames[n].astype(np.float64), expected[k, :, :, s])
        seen.add((k, s))
    assert len(seen) == SLICES * expected.shape[-1]


def test_outputs_written_beside_the_inputs_are_not_read_as_inputs(ct):
    written, series = ct
    folder = written.files[0].parent
    maps = np.zeros((1, COLS, ROWS, SLICES))
    write_dicom_outputs(series, maps, maps, ["liver"], folder, "pred")
    assert len(list(folder.glob("pred_*.dcm"))) == 2
    (again,) = find_dicom_series(folder)
    assert again.files == written.files


def test_radiograph_gets_a_seg_and_no_parametric_map(tmp_path):
    pixels = np.random.default_rng(6).integers(0, 4096, (ROWS, COLS), dtype=np.uint16)
    make_planar(tmp_path, "chest.dcm", "DX", pixels)
    (series,) = find_dicom_series(tmp_path)
    mean = np.random.default_rng(7).random((2, ROWS, COLS))
    paths = write_dicom_outputs(series, mean, mean / 4, ["lung", "heart"], tmp_path / "o", "x")
    assert paths == {"seg": "x_seg.dcm", "uncertainty": {}}  # no frame of reference
    seg = hd.seg.segread(tmp_path / "o" / paths["seg"])
    for k in range(2):
        frame = seg.get_pixels_by_source_instance(
            [series.datasets[0].SOPInstanceUID], segment_numbers=[k + 1], combine_segments=False
        )[0, :, :, 0]
        quantised = np.around(mean[k] * 255)  # highdicom reads back q / 255
        np.testing.assert_array_equal(np.around(frame * 255), quantised)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["x_seg.dcm"]


def test_photograph_the_seg_cannot_derive_from_is_one_line(tmp_path):
    pixels = np.random.default_rng(6).integers(0, 256, (ROWS, COLS, 3), dtype=np.uint8)
    path = make_planar(tmp_path, "fundus.dcm", "OP", pixels)
    (series,) = find_dicom_series(tmp_path)
    mean = np.zeros((1, ROWS, COLS))
    with pytest.raises(DataError, match="cannot derive a DICOM Segmentation") as info:
        write_dicom_outputs(series, mean, mean, ["disc"], tmp_path / "o", "fundus")
    assert info.value.path == str(path) and "\n" not in str(info.value)
    assert not (tmp_path / "o" / "fundus_seg.dcm").exists()


def test_single_slice_ct_outputs_sit_on_the_slice(tmp_path):
    written = make_ct_series(tmp_path)
    for path in written.files[1:]:
        path.unlink()
    (series,) = find_dicom_series(tmp_path)
    rng = np.random.default_rng(8)
    mean, uncertainty = rng.random((1, ROWS, COLS)), rng.random((1, ROWS, COLS)) / 4
    out = tmp_path / "out"
    paths = write_dicom_outputs(series, mean, uncertainty, ["liver"], out, "ct")
    seg = pydicom.dcmread(out / paths["seg"])
    pm = pydicom.dcmread(out / paths["uncertainty"]["liver"])
    for dataset, values in ((seg, np.around(mean[0] * 255)), (pm, uncertainty[0])):
        item = dataset.PerFrameFunctionalGroupsSequence[0]
        position = item.PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose(position, written.positions[0], atol=1e-4)
        np.testing.assert_array_equal(dataset.pixel_array, values.astype(dataset.pixel_array.dtype))


def test_enhanced_multiframe_ct_reads_and_writes_like_its_slices(ct, tmp_path):
    written, single = ct
    folder = tmp_path / "enhanced"
    folder.mkdir()
    shuffled = [single.datasets[i] for i in (3, 0, 4, 1, 2)]  # frames out of slice order
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        shuffled, generate_uid(), 9, generate_uid(), 1
    )
    enhanced.save_as(folder / "enhanced.dcm")
    (series,) = find_dicom_series(folder)
    frames = enhanced.PerFrameFunctionalGroupsSequence
    frame_positions = [f.PlanePositionSequence[0].ImagePositionPatient for f in frames]
    # the file index of each slice's frame (the converter sorts the frames itself)
    in_file = [nearest(p, frame_positions) for p in written.positions]
    assert series.frame_order == tuple(in_file) != tuple(range(SLICES))
    np.testing.assert_allclose(series.image, single.image, atol=1e-4)
    np.testing.assert_allclose(series.affine, single.affine, atol=1e-4)
    assert series.spacing == pytest.approx(single.spacing)
    mean = np.random.default_rng(9).random((1, COLS, ROWS, SLICES))
    paths = write_dicom_outputs(series, mean, mean / 4, ["liver"], tmp_path / "out", "e")
    seg = pydicom.dcmread(tmp_path / "out" / paths["seg"])
    expected = np.around(mean[0] * 255).transpose(2, 1, 0)  # [slice, row, col]
    for n, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        position = item.PlanePositionSequence[0].ImagePositionPatient
        k = nearest(position, written.positions)
        np.testing.assert_allclose(position, written.positions[k], atol=1e-4)
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        assert source.ReferencedFrameNumber == in_file[k] + 1
        np.testing.assert_array_equal(seg.pixel_array[n], expected[k])


def nearest(position, positions) -> int:
    """The index of the position in ``positions`` closest to ``position``."""
    return int(np.argmin([np.abs(np.subtract(position, p)).max() for p in positions]))


def test_wrong_shapes_are_refused(ct, tmp_path):
    _, series = ct
    good = np.zeros((1, COLS, ROWS, SLICES), np.float32)
    with pytest.raises(ValueError, match="expected"):
        write_dicom_outputs(series, good[:, :, :, :2], good, ["a"], tmp_path, "x")
    with pytest.raises(ValueError, match="expected"):
        write_dicom_outputs(series, good, good, ["a", "b"], tmp_path, "x")
