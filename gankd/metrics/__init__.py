"""Quality and cost metrics of generators; docs/metrics.md says what each number means.

Modules (import from them directly; this package re-exports nothing, so that each module name
stays the module):

* ``features``        -- the one path from generators or datasets to network features
* ``networks``        -- the Inception FID network and gankd's MNIST digit classifier
* ``frechet``         -- Fréchet distance (FID, classifier-FID) and kernel distance (KID)
* ``inception_score`` -- Inception Score
* ``fidelity``        -- student-vs-teacher MSE and PSNR
* ``cost``            -- parameters, compression, multiply-adds, size, latency, throughput
* ``evaluate``        -- all of the above for one checkpoint: ``gankd evaluate``
"""
