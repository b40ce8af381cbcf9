"""Quality and cost metrics of generators; docs/metrics.md says what each number means.

Modules (import from them directly; this package re-exports nothing, so that each module name
stays the module):

* ``registry``         -- every metric as one entry (networks needed, compute, report columns); ``gankd evaluate``'s table
* ``features``         -- the one path from generators or datasets to network features
* ``networks``         -- the Inception FID network and gankd's MNIST digit classifier
* ``inception_v3``     -- the FID Inception-v3 as a plain module (batch norms folded), from the TorchScript tensors
* ``frechet``          -- Fréchet distance (FID, classifier-FID) and kernel distance (KID)
* ``inception_score``  -- Inception Score
* ``precision_recall`` -- improved precision and recall (Kynkaanniemi et al. 2019)
* ``fidelity``         -- student-vs-teacher MSE and PSNR
* ``cost``             -- parameters, compression, multiply-adds, size, latency, throughput
* ``evaluate``         -- all of the above for one checkpoint: ``gankd evaluate``, cached reference features
"""
