"""Streaming: watch a camera folder (or take frames in memory), segment, track, write results."""

from deepis_rt.stream.settings import StreamSettings
from deepis_rt.stream.stream import Stream

__all__ = ["Stream", "StreamSettings"]
