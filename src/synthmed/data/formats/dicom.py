"""DICOM series folders through SimpleITK's GDCM reader (several series in one folder: the largest is read)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from synthmed.data.formats.common import Volume, suffix_of_name
from synthmed.data.formats.itk import from_itk_image, itk_reason
from synthmed.errors import SynthmedError

log = logging.getLogger(__name__)


def has_dicom_magic(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def dicom_files(folder: Path, limit: int | None = None) -> list[str]:
    """DICOM files directly in ``folder``: ``*.dcm``/``*.dicom`` or extension-less files with 'DICM' magic."""
    found = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return []
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_file():
            continue
        lowered = entry.name.lower()
        if lowered.endswith((".dcm", ".dicom")) or (not suffix_of_name(entry.name) and has_dicom_magic(entry.path)):
            found.append(entry.path)
            if limit is not None and len(found) >= limit:
                break
    return found


def read_series(folder: Path, channel: int | None) -> Volume:
    import SimpleITK as sitk

    where = str(folder)
    try:
        series_ids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    except Exception as error:  # noqa: BLE001
        raise SynthmedError(f"{where}: cannot scan the DICOM folder ({itk_reason(error)})") from None
    if not series_ids:
        raise SynthmedError(f"{where}: DICOM files found but no readable series; are they image DICOM files?")
    files_by_series = {sid: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid)) for sid in series_ids}
    chosen = max(series_ids, key=lambda sid: len(files_by_series[sid]))
    if len(series_ids) > 1:
        log.warning(
            "%s holds %d DICOM series; reading the largest (%s, %d files)",
            where,
            len(series_ids),
            chosen,
            len(files_by_series[chosen]),
        )
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files_by_series[chosen])
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except Exception as error:  # noqa: BLE001
        raise SynthmedError(f"{where}: cannot read DICOM series {chosen} ({itk_reason(error)})") from None
    volume = from_itk_image(image, folder, channel, "dicom", where)
    header = {}
    try:
        for key in reader.GetMetaDataKeys(0):
            header[key] = reader.GetMetaData(0, key)
    except Exception:  # noqa: BLE001 - metadata is informative only
        pass
    volume.header = header
    volume.meta.update(
        {
            "series_id": chosen,
            "series_ids": series_ids,
            "n_files": len(files_by_series[chosen]),
            "files": files_by_series[chosen],
        }
    )
    return volume
