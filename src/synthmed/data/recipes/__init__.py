"""Recipes for public data sets whose files do not follow the one-folder-per-subject layout: each turns a download
into manifest rows (``subject, modality, path[, key, channel]``) that ``prepare --manifest`` reads.

- :mod:`.lgg`: the Kaggle LGG segmentation set (RGB TIFF slices, masks beside them), also recognised by
  ``discover`` when given its folder;
- :mod:`.ixi`: SynDiff's IXI slices (``T1.mat`` / ``T2.mat``);
- :mod:`.shared_real`: the benchmark's real suite (BraTS-layout and MS brains, their fixed split).
"""

from synthmed.data.recipes.ixi import ixi_manifest
from synthmed.data.recipes.lgg import is_lgg_layout, lgg_manifest
from synthmed.data.recipes.shared_real import REAL_SUBJECTS, real_suite_manifest

__all__ = ["REAL_SUBJECTS", "ixi_manifest", "is_lgg_layout", "lgg_manifest", "real_suite_manifest"]
