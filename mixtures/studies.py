"""The mixtures of the source studies: `dspt14` (self-pretraining) and `recycling36`.

Both are examples-proportional with T5's artificial size limit K = 2^16 (65,536 train
examples), the smallest K of T5's sweep (2^16 .. 2^21). Their datasets differ in size by
up to four orders of magnitude (CB 250, COPA 400 .. Amazon polarity 3.6M, Sentiment140
1.6M); without a cap the largest few would take nearly every sample and the small ones
would be seen a handful of times. With K = 2^16, at least 11 of the 14 dspt14 corpora
hit the cap and are mixed equally, and recycling36's small datasets still get rates in
proportion to their size. `_equal` and `_temperature` (T=2, same K) variants too.

Counts come from local files when DATA_DIR is set, else the recorded TFDS split sizes;
a dataset with neither (conll2012_ner counts sentences, which TFDS's document metadata
does not give) makes the rate an error naming it, never a silent fallback.
"""

from __future__ import annotations

from recast.mixtures import benchmarks
from recast.tasks import dspt, recycling

MAXIMUM = 2**16

benchmarks.add_mixture_variants("dspt14", dspt.DSPT14, maximum=MAXIMUM)
benchmarks.add_mixture_variants("recycling36", recycling.RECYCLING36, maximum=MAXIMUM)
