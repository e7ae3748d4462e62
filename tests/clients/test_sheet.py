"""Contact sheets caption Chinese prompts with a CJK font, and without one say how to get it."""
from __future__ import annotations

import logging

import pytest
from PIL import Image

from tessera.clients import sheet


def _caption_ink(img: Image.Image, label_height: int = 16, pad: int = 4) -> int:
    """Dark pixels in the caption band above the images."""
    band = img.crop((0, pad, img.width, pad + label_height)).convert("L")
    return sum(band.histogram()[:128])


def test_chinese_caption_is_drawn_with_a_cjk_font():
    assert sheet.cjk_font_path(), "no CJK font: apt-get install fonts-wqy-zenhei (the README's test command does)"
    red = Image.new("RGB", (64, 64), (200, 30, 30))
    zh = sheet.contact_sheet([[red, red]], ["蓝色背景上的红色圆形"])
    en = sheet.contact_sheet([[red, red]], ["a red circle"])
    blank = sheet.contact_sheet([[red, red]], [""])
    assert _caption_ink(zh) > 50 and _caption_ink(en) > 20 and _caption_ink(blank) == 0


def test_without_a_cjk_font_the_caption_is_left_off_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(sheet, "cjk_font_path", lambda: None)
    sheet._font.cache_clear()
    try:
        red = Image.new("RGB", (64, 64), (200, 30, 30))
        with caplog.at_level(logging.WARNING, logger="tessera.clients.sheet"):
            img = sheet.contact_sheet([[red]], ["红色圆形"])
        assert _caption_ink(img) == 0
        assert "fonts-wqy-zenhei" in caplog.text and "红色圆形" in caplog.text
        assert _caption_ink(sheet.contact_sheet([[red]], ["a red circle"])) > 0  # ASCII still drawn
    finally:
        sheet._font.cache_clear()


def test_no_images_is_a_clear_error():
    with pytest.raises(ValueError, match="no images"):
        sheet.contact_sheet([[]])
