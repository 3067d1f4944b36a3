"""gateway-bench --sample: the py-spy summary is read correctly (py-spy itself is not run)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.bench import sampling
from gateway.testing import temp_path

RAW = """\
<module> (twistd:6);ReactorBase.mainLoop (twisted/internet/base.py:697);FastLane._take_frames (gateway/legs/wire.py:190);mask (gateway/legs/wire.py:60) 6
<module> (twistd:6);ReactorBase.mainLoop (twisted/internet/base.py:697);FastLane._take_frames (gateway/legs/wire.py:201) 3
<module> (twistd:6);ReactorBase.mainLoop (twisted/internet/base.py:698) 1
<module> (twistd:6);ReactorBase.mainLoop (twisted/internet/base.py:697);EPollReactor.doPoll (twisted/internet/epollreactor.py:244) 20
_bootstrap (threading.py:1002);run (threading.py:982);Condition.wait (threading.py:327) 10
not a stack line
"""


class SummariseTests(SynchronousTestCase):
    """sampling.summarise and render."""

    def test_own_and_cumulative_shares(self) -> None:
        """Own time goes to the innermost frame, cumulative to every frame once; waiting is left out."""
        path = temp_path(self, "sample.raw")
        with open(path, "w") as f:
            f.write(RAW)
        summary = sampling.summarise(path)
        self.assertEqual((summary["samples"], summary["waiting"]), (10, 30))
        self.assertEqual(summary["own"][:3], [("mask (gateway/legs/wire.py)", 60.0),
                                              ("FastLane._take_frames (gateway/legs/wire.py)", 30.0),
                                              ("ReactorBase.mainLoop (twisted/internet/base.py)", 10.0)])
        cumulative = dict(summary["cumulative"])
        self.assertEqual(cumulative["ReactorBase.mainLoop (twisted/internet/base.py)"], 100.0)
        self.assertEqual(cumulative["FastLane._take_frames (gateway/legs/wire.py)"], 90.0)
        text = sampling.render(summary)
        self.assertIn("10 samples of work (30 more waiting in epoll or an idle thread", text)
        self.assertIn(" 60.00  mask (gateway/legs/wire.py)", text)
