"""Tests for the JSON log observer and its redaction."""

from __future__ import annotations

import io
import json

from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from gateway.logs import json_observer


class JsonLogTests(SynchronousTestCase):
    """One JSON object per line, structured fields kept, secrets gone."""

    def test_line_and_redaction(self) -> None:
        """A per-call line keeps its fields; a secret in a field or the message is redacted."""
        out = io.StringIO()
        observer = json_observer(out, {"DEEPGRAM_API_KEY": "sekrit-key-123"})
        log = Logger(namespace="gateway.call", observer=observer)
        log.info("call {call_id} used {header}", call_id="c-1", header="Token sekrit-key-123", phase="live")
        log.debug("not shown")
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 1)
        record = json.loads(lines[0])
        self.assertEqual((record["call_id"], record["phase"], record["level"], record["ns"]),
                         ("c-1", "live", "info", "gateway.call"))
        self.assertNotIn("sekrit-key-123", lines[0])
        self.assertIn("[redacted]", record["msg"])

    def test_nested_fields_stay_json(self) -> None:
        """A dict field (the call report) is nested JSON, not a repr string; secrets inside are redacted."""
        out = io.StringIO()
        observer = json_observer(out, {"DEEPGRAM_API_KEY": "sekrit-key-123"})
        log = Logger(namespace="gateway.call", observer=observer)
        report = {"call_id": "c-1", "frames": {"caller": [1, 2]}, "closes": ("1000", None),
                  "note": "key sekrit-key-123", "raw": b"\x00", 7: True}
        log.info("call {call_id} ended", call_id="c-1", call_report=report)
        record = json.loads(out.getvalue())
        self.assertEqual(record["call_report"], {"call_id": "c-1", "frames": {"caller": [1, 2]},
                                                 "closes": ["1000", None], "note": "key [redacted]",
                                                 "raw": "b'\\x00'", "7": True})

    def test_depth_is_bounded(self) -> None:
        """A very deep (or self-referencing) value is cut to a repr past MAX_DEPTH levels."""
        from gateway.logs import MAX_DEPTH

        out = io.StringIO()
        log = Logger(namespace="gateway.call", observer=json_observer(out, {}))
        loop: list = []
        loop.append(loop)
        log.info("deep", value=loop)
        record = json.loads(out.getvalue())
        node = record["value"]
        for _ in range(MAX_DEPTH):
            node = node[0]
        self.assertEqual(node, "[[...]]")
