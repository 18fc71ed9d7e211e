"""Convert original OSCAR, M3P and MMT-Retrieval checkpoints into mm_sbert models."""

from __future__ import annotations

from mm_sbert.convert.checkpoint_converter import CheckpointConverter, ConvertedModel
from mm_sbert.convert.convert_command import build_parser, main
from mm_sbert.convert.m3p_converter import M3PConverter
from mm_sbert.convert.mmt_retrieval_converter import MMTRetrievalConverter
from mm_sbert.convert.oscar_converter import OscarConverter
from mm_sbert.convert.state_dict_mapping import CheckpointMismatchError, ConversionReport, KeyMapper

__all__ = [
    "CheckpointConverter",
    "CheckpointMismatchError",
    "ConversionReport",
    "ConvertedModel",
    "KeyMapper",
    "M3PConverter",
    "MMTRetrievalConverter",
    "OscarConverter",
    "build_parser",
    "main",
]
