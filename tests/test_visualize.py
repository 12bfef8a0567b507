"""Contact sheets: overlay colours and contours land on the mask pixels, layout, and `vis data show`."""

import numpy as np
import pytest
from PIL import Image

from vis_core.cli import main as vis_main
from vis_core.data.synthetic import make_config, write_split
from vis_core.data.visualize import Track, contact_sheet, draw_frame, id_color, select_frames, show_video
from vis_core.data.ytvis import load_annotations


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    out = tmp_path_factory.mktemp("vis")
    return write_split(out, make_config("ovis", height=40, width=64, frames=(6, 8)), "valid", 2, seed=0)


def test_id_colors_are_fixed_and_distinct():
    colors = [id_color(i) for i in range(1, 13)]
    assert colors == [id_color(i) for i in range(1, 13)] and len(set(colors)) == 12


def test_overlay_blends_inside_outlines_the_border_and_leaves_the_rest():
    frame = np.full((20, 24, 3), 100, dtype=np.uint8)
    mask = np.zeros((20, 24), dtype=bool)
    mask[6:18, 8:22] = True
    tile = np.asarray(draw_frame(frame, [Track(3, [mask])], 0, scale=2, alpha=0.5))
    color = np.array(id_color(3))
    # contour in the id colour: the bottom row and right column of the upscaled mask
    assert (tile[35, 30:44] == color).all() and (tile[24:36, 43] == color).all()
    # strictly inside, away from the id label at the top-left of the mask: half frame, half colour
    assert np.abs(tile[32, 40].astype(float) - (0.5 * 100 + 0.5 * color)).max() <= 1
    assert (tile[0:10, 0:10] == 100).all() and (tile[36:40, :] == 100).all()  # untouched outside
    assert tile.shape[1] == 48 and tile.shape[0] > 40  # upscaled frame plus a caption strip


def test_contact_sheet_layout_and_errors():
    frames = [np.zeros((8, 10, 3), dtype=np.uint8)] * 5
    masks = [np.ones((8, 10), dtype=bool)] + [None] * 4
    sheet = contact_sheet(frames, [Track(1, masks, "a")], cols=2, scale=1)
    tile = draw_frame(frames[0], [Track(1, masks, "a")], 0, scale=1)
    assert sheet.width == 2 * tile.width + 3 * 4
    assert sheet.height > 3 * tile.height  # 3 rows plus the heading
    with pytest.raises(ValueError, match="track 1 has 4 masks for 5 frames"):
        contact_sheet(frames, [Track(1, masks[:4])])


def test_select_frames():
    assert select_frames(10, 4) == [0, 3, 6, 9]
    assert select_frames(10, 16) == list(range(10))
    assert select_frames(30, 3, start=5, stride=10) == [5, 15, 25]
    with pytest.raises(ValueError, match="outside the video"):
        select_frames(5, start=5)


def test_show_video_draws_ground_truth_and_predictions(split, tmp_path):
    root = split.parent / "JPEGImages"
    ann = load_annotations(split)
    vid = ann.video_ids[0]
    gt = np.asarray(show_video(split, root, vid, max_frames=4, cols=4, scale=1, out=tmp_path / "gt.png"))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "gt.png")), gt)
    empty = np.asarray(show_video(split, root, vid, max_frames=4, cols=4, scale=1, results=[]))
    # the ground-truth sheet differs from the bare one, on roughly the annotated pixels
    n_mask = sum(a["areas"][0] or 0 for a in ann.anns_by_video[vid])
    assert gt.shape == empty.shape and (gt != empty).any(-1).sum() >= 0.5 * n_mask
    # predictions equal to the GT masks are drawn on the same pixels
    results = [
        {"video_id": vid, "category_id": a["category_id"], "score": 0.9, "segmentations": a["segmentations"]}
        for a in ann.anns_by_video[vid]
    ]
    pred = np.asarray(show_video(split, root, vid, max_frames=4, cols=4, scale=1, results=results))
    assert pred.shape == gt.shape
    low = np.asarray(
        show_video(split, root, vid, max_frames=4, cols=4, scale=1, results=results, score_threshold=0.95)
    )
    assert ((pred != empty).any(-1).sum()) > ((low != empty).any(-1).sum())


def test_cli_show(split, tmp_path, capsys):
    out = tmp_path / "sheet.png"
    assert vis_main(["data", "show", str(split), "--video", "2", "--frames", "3", "--out", str(out)]) == 0
    assert Image.open(out).size[0] > 3 * 64
    assert vis_main(["data", "show", str(split), "--image-root", str(tmp_path), "--out", str(out)]) == 1
    assert "frame image not found" in capsys.readouterr().err
