"""A frame-subset decode may return more frames than the binder asked for (a VAE compressed in time
decodes whole groups): binders pick theirs by index, so the embedding is the one of the asked frames."""

from __future__ import annotations

import pytest
import torch

from sah.binder import frames_at
from sah.media import Video
from sah.plugins.binders.toy import ToyBinder
from sah.plugins.toy import world


def test_a_covering_superset_embeds_as_the_asked_frames():
    binder = ToyBinder()
    clip = world.make_video([3], torch.Generator().manual_seed(0)).repeat(1, 3, 1, 1, 1)  # 24 frames
    clip[:, 1::2] = 0.0  # odd frames black: a binder that took the wrong frames would see it
    video = Video(clip, world.FPS)
    asked = binder.video_frames(video.num_frames, video.fps)
    full = binder.embed(video)
    exact = binder.embed(Video(clip[:, asked], world.FPS, frame_indices=asked, total_frames=24))
    superset = sorted(set(asked) | {1, 5, 9, 13})  # more frames than asked, among them black ones
    covering = binder.embed(Video(clip[:, superset], world.FPS, frame_indices=superset, total_frames=24))
    torch.testing.assert_close(exact, full)
    torch.testing.assert_close(covering, full)


def test_frames_at_refuses_a_subset_without_the_asked_frames():
    video = Video(torch.rand(1, 3, 3, 4, 4), 8.0, frame_indices=(0, 2, 4), total_frames=8)
    torch.testing.assert_close(frames_at(video, [4, 0]), video.frames[:, [2, 0]])
    with pytest.raises(ValueError, match=r"lack \[3\]"):
        frames_at(video, [0, 3])
