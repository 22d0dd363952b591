"""Where the scorer's inputs come from: files, folders, zip archives and S3.

Everything streams: folders are listed one directory at a time, zip members are read one by one,
and contents are read only when the consumer asks for the next input, so memory stays flat.

* Folders are walked recursively in sorted name order. Symlinked folders are followed, but each
  directory (device, inode) is entered once, so symlink cycles terminate.
* Hidden entries (".DS_Store", ".git", ...) in folders and zips, and ``__MACOSX/`` in zips, are
  skipped silently. Other non-image files are skipped and counted in ``SourceStats``.
* ``.zip`` files met while walking a folder are expanded, like ``.zip`` objects under an S3
  prefix, so a folder and its copy on S3 give the same rows. Zips inside zips are not expanded.
* A file named like an image that was given explicitly is always an input, even if broken.
* Problems with one file or member (unreadable, dangling symlink, FIFO, too large, encrypted,
  corrupt zip) become ``Input(error=...)`` rows and the job goes on: retrying cannot fix them.

Modules: ``base`` (Input, SourceStats, limits), ``local`` (files and folders), ``zips``,
``s3`` (prefixes and objects), ``specs`` (specs -> inputs), ``labels`` (a labels CSV).
"""

from scorer.sources.base import (
    MAX_FILE_BYTES,
    ZIP_EXTENSION,
    Input,
    SourceError,
    SourceStats,
    extension,
)
from scorer.sources.labels import (
    LabelMatcher,
    LabelsError,
    read_labels_csv,
    read_number_labels_csv,
)
from scorer.sources.local import load
from scorer.sources.s3 import iter_listed, iter_s3_object
from scorer.sources.specs import check_specs, iter_inputs

__all__ = [
    "MAX_FILE_BYTES",
    "ZIP_EXTENSION",
    "Input",
    "LabelMatcher",
    "LabelsError",
    "SourceError",
    "SourceStats",
    "check_specs",
    "extension",
    "iter_inputs",
    "iter_listed",
    "iter_s3_object",
    "load",
    "read_labels_csv",
    "read_number_labels_csv",
]
