"""Fail fast: every split a run reads is checked before anything is
encoded, and all problems are reported at once, naming files and classes.
"""
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import python_tool, run_tool, tiny_config, write_images
from PIL import Image

from tip_adapter_mm.datasets.checks import (DataProblems, image_problem,
                                            image_problems)


def noisy_image(path: Path, size=(40, 50)) -> Path:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
    Image.fromarray(img).save(path)
    return path


def cut(path: Path, keep: float = 0.6) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    return path


def test_image_problem_is_a_cheap_header_and_end_check(tmp_path):
    jpeg = noisy_image(tmp_path / 'ok.jpg')
    png = noisy_image(tmp_path / 'ok.png')
    assert image_problem(str(jpeg)) is None
    assert image_problem(str(png)) is None
    # Cut short: the header still opens (PIL reads it lazily), the end
    # marker is gone.
    short_jpeg = cut(noisy_image(tmp_path / 'short.jpg'))
    with Image.open(short_jpeg) as img:
        assert img.size == (50, 40)
    assert 'truncated' in image_problem(str(short_jpeg))
    assert 'truncated' in image_problem(
        str(cut(noisy_image(tmp_path / 'short.png'))))
    text = tmp_path / 'notes.jpg'
    text.write_text('not an image')
    assert 'cannot be opened as an image' in image_problem(str(text))
    assert image_problem(str(tmp_path / 'gone.jpg')) == 'does not exist'
    assert list(image_problems([str(jpeg), str(short_jpeg)])) == [
        str(short_jpeg)]


def test_problems_are_listed_together_and_capped():
    problems = DataProblems()
    problems.add('first', [f'file{i}' for i in range(13)])
    problems.add('second')
    with pytest.raises(ValueError) as err:
        problems.raise_if_any()
    text = str(err.value)
    assert 'has 2 problems' in text and '1. first' in text
    assert '2. second' in text and 'file9' in text
    assert 'file10' not in text and '... and 3 more' in text


def test_all_problems_in_one_error_before_encoding(tmp_path, tiny_clip,
                                                   image_folders):
    """tools/test.py on a folder dataset with four problems in three
    splits: a class with fewer than K train images, an empty val class
    folder, test class names that differ from the few-shot set's, and a
    truncated test image. One error names them all; nothing is encoded
    (no feature-store file, no 'Encoding' line)."""
    data = tmp_path / 'data'
    shutil.copytree(image_folders, data)
    for extra in sorted((data / 'train' / 'blue_sky').iterdir())[2:]:
        extra.unlink()  # 2 images, K = 4
    for image in (data / 'val' / 'green_leaf').iterdir():
        image.unlink()  # an empty class folder
    (data / 'test' / 'blue_sky').rename(data / 'test' / 'blue_ocean')
    truncated = cut(data / 'test' / 'red_apple' / '001.jpg')
    config = tiny_config(tmp_path / 'cfg.py', tiny_clip, data, num_shots=4)
    work_dir = tmp_path / 'work'
    out = run_tool(python_tool('test.py', str(config), '--work-dir',
                               str(work_dir)), expect_rc=1)
    assert 'The data of this run has 4 problems' in out, out
    assert ("class 0 ('blue_sky'): 2 images" in out
            and 'fewer than num_shots=4' in out), out
    assert str(data / 'val' / 'green_leaf') in out, out
    assert "'blue_sky' (the few-shot train set) vs 'blue_ocean' (the " \
        'test set' in out, out
    assert f'{truncated} is truncated' in out, out
    assert 'Encoding' not in out, out
    assert not list(work_dir.rglob('*.pth')), list(work_dir.rglob('*'))


def test_write_images_helper_is_a_jpeg_writer(tmp_path):
    """The generated images pass the check (no false alarm)."""
    paths = write_images(tmp_path, 2, 0)
    assert image_problems([str(p) for p in paths]) == {}
