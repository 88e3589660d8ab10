"""The Kohya dataset model: one definition of sd-scripts' dataset format, used by import,
layout, check, buckets and the trainer (base layer: imports only curate.config, errors, paths).

- `rules`: how sd-scripts reads a folder name, an image name and a caption file;
- `model`: `Subset`, `Dataset`, `DatasetConfig` and the dataset.toml levels and defaults;
- `toml_io`: reading (`read_toml`, `load_toml`) and writing (`write_toml`, `dumps`) dataset.toml;
- `folders`: folder mode (`read_folders`, `read_project`) and `import_subset`, which says
  whether a scraped folder is a Kohya subset.

All pinned against sd-scripts' own code by tests/data/sd_scripts_dataset.json.
"""

from curate.kohya.folders import (
    FolderSubset,
    data_dir_kind,
    folder_subsets,
    holds_subset,
    import_subset,
    read_folders,
    read_project,
)
from curate.kohya.model import (
    ALLOWED,
    ASCENDABLE,
    DATASET_DEFAULTS,
    DATASET_KEYS,
    SUBSET_DEFAULTS,
    SUBSET_ONLY,
    Dataset,
    DatasetConfig,
    Problem,
    Subset,
    effective,
)
from curate.kohya.rules import (
    CAPTION_LIMIT,
    PLUGIN_IMAGE_EXTS,
    SD_IMAGE_EXTS,
    caption_extension,
    caption_lines,
    caption_names,
    caption_text,
    parse_folder_name,
    plugin_note,
    read_caption_bytes,
    readable_plugin_exts,
    sd_image,
    unsafe_caption_reason,
)
from curate.kohya.toml_io import DATASET_TOML, dumps, load_toml, read_toml, resolve_image_dir, write_toml

__all__ = [
    "ALLOWED", "ASCENDABLE", "CAPTION_LIMIT", "DATASET_DEFAULTS", "DATASET_KEYS", "DATASET_TOML",
    "PLUGIN_IMAGE_EXTS", "SD_IMAGE_EXTS",
    "SUBSET_DEFAULTS", "SUBSET_ONLY", "Dataset", "DatasetConfig", "FolderSubset", "Problem", "Subset",
    "caption_extension", "caption_lines", "caption_names", "caption_text", "data_dir_kind", "dumps",
    "effective", "folder_subsets", "holds_subset", "import_subset", "load_toml", "parse_folder_name",
    "plugin_note", "read_caption_bytes", "read_folders", "read_project", "read_toml",
    "readable_plugin_exts", "resolve_image_dir", "sd_image", "unsafe_caption_reason", "write_toml",
]
