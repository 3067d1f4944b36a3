"""python -m gateway.bench.transcodecount: its counted loop converts what it says (no speed bound)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.bench import transcodecount


class TranscodeCountTests(SynchronousTestCase):
    """The loop callgrind counts converts 20 ms frames each way (run here without valgrind)."""

    def test_up(self) -> None:
        """mu-law 8 kHz frames come out as 20 ms of linear16 16 kHz each (640 bytes)."""
        self.assertEqual(transcodecount.convert_frames("up", 60), 60 * 640)

    def test_down(self) -> None:
        """linear16 16 kHz frames come out as 20 ms of mu-law 8 kHz each (160 bytes)."""
        self.assertEqual(transcodecount.convert_frames("down", 60), 60 * 160)
