from __future__ import annotations

import os

from mm_sbert.data import ImageCaptionCorpus
from mm_sbert.demo import SyntheticScenes


def test_the_saved_caption_file_reads_back_as_the_scenes(tmp_path):
    scenes = SyntheticScenes(3, captions_per_image=2, seed=4)
    path = scenes.save_caption_file(str(tmp_path))
    assert path == os.path.join(str(tmp_path), "captions.csv")
    corpus = ImageCaptionCorpus.from_file(path)
    assert corpus.captions == scenes.captions
    assert [os.path.basename(image) for image in corpus.images] == [f"scene_{i:05d}.png" for i in range(3)]
    assert corpus.evaluation_data()[2] == scenes.caption_image_ids
