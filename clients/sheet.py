"""Contact sheets: a grid of images with an optional caption per row."""
from __future__ import annotations

from PIL import Image, ImageDraw


def contact_sheet(rows: list[list[Image.Image]], labels: list[str] | None = None, scale: int = 2,
                  pad: int = 4, label_height: int = 14) -> Image.Image:
    """One row of images per entry of `rows`, each image scaled by `scale`."""
    if not rows or not any(rows):
        raise ValueError("no images for the contact sheet")
    w, h = rows[0][0].width * scale, rows[0][0].height * scale
    cols = max(len(r) for r in rows)
    lh = label_height if labels else 0
    sheet = Image.new("RGB", (pad + cols * (w + pad), pad + len(rows) * (h + pad + lh)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, images in enumerate(rows):
        y = pad + r * (h + pad + lh)
        if labels:
            draw.text((pad, y), labels[r], fill=(0, 0, 0))
        for c, image in enumerate(images):
            sheet.paste(image.resize((w, h), Image.NEAREST), (pad + c * (w + pad), y + lh))
    return sheet
