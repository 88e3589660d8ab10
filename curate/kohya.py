"""Facts of sd-scripts' dataset format that import, `curate check` and the trainer all follow."""

import re

# `N_name` image folders: N repeats, then the class tokens (sd-scripts folder mode).
KOHYA_FOLDER = re.compile(r"^(\d+)_(.+)$", re.DOTALL)
# sd-scripts' IMAGE_EXTENSIONS: these, all-lower or ALL-UPPER (avif/jxl only with plugins).
SD_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
