"""Contact sheets: a grid of images with a caption per row, English or Chinese.

Captions need a font with CJK glyphs: $TESSERA_FONT if set, else Debian's
fonts-wqy-zenhei or fonts-noto-cjk at their fixed paths, else any CJK font
matplotlib's font manager knows (when matplotlib is installed). Without one, a
caption that needs it is left off with a warning naming the package to install.
"""
from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger("tessera.clients.sheet")

DEBIAN_CJK_FONTS = (
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",  # fonts-wqy-zenhei
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",  # fonts-noto-cjk
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",  # fonts-wqy-microhei
)
CJK_FAMILIES = ("WenQuanYi Zen Hei", "Noto Sans CJK SC", "WenQuanYi Micro Hei", "Source Han Sans SC")
MISSING_FONT = ("no CJK font found for a contact sheet caption: install Debian's fonts-wqy-zenhei "
                "(apt-get install fonts-wqy-zenhei) or set TESSERA_FONT to a .ttf/.ttc file; "
                "the caption %r is left off")


@functools.cache
def cjk_font_path() -> str | None:
    """A font file with CJK glyphs, or None."""
    env = os.environ.get("TESSERA_FONT")
    if env and Path(env).is_file():
        return env
    for path in DEBIAN_CJK_FONTS:
        if Path(path).is_file():
            return path
    try:
        from matplotlib import font_manager
    except ImportError:
        return None
    for family in CJK_FAMILIES:
        try:
            return font_manager.findfont(font_manager.FontProperties(family=family), fallback_to_default=False)
        except ValueError:
            continue
    return None


@functools.cache
def _font(size: int) -> tuple[ImageFont.ImageFont, bool]:
    """The caption font and whether it draws CJK."""
    path = cjk_font_path()
    if path:
        return ImageFont.truetype(path, size), True
    return ImageFont.load_default(), False


def contact_sheet(rows: list[list[Image.Image]], labels: list[str] | None = None, scale: int = 2,
                  pad: int = 4, label_height: int = 16) -> Image.Image:
    """One row of images per entry of `rows`, each image scaled by `scale`, captioned by `labels`."""
    if not rows or not any(rows):
        raise ValueError("no images for the contact sheet")
    w, h = rows[0][0].width * scale, rows[0][0].height * scale
    cols = max(len(r) for r in rows)
    lh = label_height if labels else 0
    sheet = Image.new("RGB", (pad + cols * (w + pad), pad + len(rows) * (h + pad + lh)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font, cjk = _font(label_height - 3) if labels else (None, False)
    for r, images in enumerate(rows):
        y = pad + r * (h + pad + lh)
        if labels and labels[r]:
            if cjk or labels[r].isascii():
                draw.text((pad, y), labels[r], fill=(0, 0, 0), font=font)
            else:
                log.warning(MISSING_FONT, labels[r])
        for c, image in enumerate(images):
            sheet.paste(image.resize((w, h), Image.NEAREST), (pad + c * (w + pad), y + lh))
    return sheet
