"""python -m gateway.bench.unitcost: each unit cost is measured and reported (never a speed bound)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.bench import unitcost


class UnitCostTests(SynchronousTestCase):
    """The three measurements run end to end and give positive figures under their names."""

    def test_tls(self) -> None:
        """Encrypt and decrypt per record for Twisted's TLS, bare pyOpenSSL, the stdlib's ssl and
        the leg's layer on it (the Twisted connection and the layer really decrypted every
        record: it raises otherwise)."""
        result = unitcost.tls_costs(repeat=1, n=50)
        for stack in ("twisted", "pyopenssl", "stdlib", "layer"):
            for part in ("encrypt", "decrypt", "pair"):
                self.assertGreater(result[f"{stack}_{part}_us"], 0, (stack, part))

    def test_transcode(self) -> None:
        """The transcoder and the resampler, each way, per 20 ms frame."""
        result = unitcost.transcode_costs(repeat=1, n=20)
        self.assertEqual(sorted(result), ["resample_down_us", "resample_up_us", "transcode_down_us",
                                          "transcode_pair_us", "transcode_up_us"])
        self.assertTrue(all(v > 0 for v in result.values()), result)

    def test_batching(self) -> None:
        """Separate and batched resampling per frame, per batch size."""
        result = unitcost.batching_costs(repeat=1, sizes=(2,))
        self.assertGreater(result["k2"]["separate_us_per_frame"], 0)
        self.assertGreater(result["k2"]["batched_us_per_frame"], 0)
